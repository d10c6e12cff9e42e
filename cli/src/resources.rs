//! The resource commands (`coffer jobs list`, `coffer buckets create -f …`):
//! one table of which API methods serve each resource and which columns its
//! table shows. Requests are built from the API's descriptors, so every field
//! the API has (today's and those added later) can be set and is printed.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    ReflectMessage as _, Value,
};

use crate::connection::Api;
use crate::failure::Usage;
use crate::fields::{self, Assignment};
use crate::output::{to_json, Column, Format, Printer};

/// A kind of resource and the methods that serve it.
pub struct Resource {
    /// The command's name.
    pub name: &'static str,
    pub service: &'static str,
    /// The resource message.
    pub message: &'static str,
    pub list: Option<&'static str>,
    pub get: Option<&'static str>,
    pub create: Option<&'static str>,
    pub update: Option<&'static str>,
    pub delete: Option<&'static str>,
    pub columns: &'static [Column],
}

/// The verbs every resource command takes.
#[derive(Debug, clap::Subcommand)]
pub enum Verb {
    /// List them (every page), newest first where the API orders so.
    List {
        /// A filter of the list request, e.g. `name_prefix=daily`, `job_id=ID`.
        #[arg(long = "filter", value_name = "FIELD=VALUE")]
        filters: Vec<Assignment>,
        /// Stop after this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one.
    Get { id: String },
    /// Create one from `-f FILE` and/or `--set FIELD=VALUE`.
    Create(Fill),
    /// Change the fields given in `-f FILE` and/or `--set`; others stay.
    Update {
        id: String,
        #[command(flatten)]
        fill: Fill,
    },
    /// Delete one.
    Delete {
        id: String,
        /// Also delete what it owns, where the API allows (users).
        #[arg(long)]
        force: bool,
    },
}

/// A message's fields from a file and from flags.
#[derive(Debug, clap::Args)]
pub struct Fill {
    /// YAML or JSON in the API's JSON mapping (`-` for stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A field (dotted path into nested messages; maps as `field.KEY`;
    /// repeated fields take one value per `--set`).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub set: Vec<Assignment>,
}

impl Resource {
    fn method(
        &self,
        api: &Api,
        verb: &str,
        name: Option<&'static str>,
    ) -> anyhow::Result<MethodDescriptor> {
        let Some(name) = name else {
            bail!(Usage(format!("the API cannot {verb} {}", self.name)));
        };
        api.method(self.service, name)
    }

    fn descriptor(&self, api: &Api) -> anyhow::Result<MessageDescriptor> {
        crate::connection::message_descriptor(api.pool(), self.message)
    }

    /// Runs one verb.
    pub async fn run(&self, api: &Api, printer: &Printer, verb: Verb) -> anyhow::Result<()> {
        match verb {
            Verb::List { filters, limit } => {
                let items = self.list(api, &filters, limit).await?;
                printer.items(&items, self.columns)
            }
            Verb::Get { id } => {
                let item = self.get(api, &id).await?;
                printer.item(&item, self.columns)
            }
            Verb::Create(fill) => {
                let response = self.create(api, &fill).await?;
                self.print_created(api, printer, &response)
            }
            Verb::Update { id, fill } => {
                let updated = self.update(api, &id, &fill).await?;
                printer.item(&updated, self.columns)
            }
            Verb::Delete { id, force } => {
                let method = self.method(api, "delete", self.delete)?;
                let mut request = DynamicMessage::new(method.input());
                set_string(&mut request, "id", &id)?;
                if force {
                    let field = fields::field_by_name(&method.input(), "force")
                        .map_err(|_| Usage(format!("--force does not apply to {}", self.name)))?;
                    request.set_field(&field, Value::Bool(true));
                }
                api.call(&method, request).await?;
                eprintln!("deleted {id}");
                Ok(())
            }
        }
    }

    /// Every item, following page tokens.
    pub async fn list(
        &self,
        api: &Api,
        filters: &[Assignment],
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<DynamicMessage>> {
        let method = self.method(api, "list", self.list)?;
        let mut request = DynamicMessage::new(method.input());
        fields::apply(&mut request, filters)?;
        let items_field = field_of_type(&method.output(), &self.descriptor(api)?, true)?;
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        loop {
            let response = api.call(&method, request.clone()).await?;
            if let Some(list) = response.get_field(&items_field).as_list() {
                items.extend(list.iter().filter_map(|v| v.as_message().cloned()));
            }
            let next = response
                .get_field_by_name("next_page_token")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if next.is_empty() || items.len() >= limit {
                break;
            }
            set_string(&mut request, "page_token", &next)?;
        }
        items.truncate(limit);
        Ok(items)
    }

    /// One item by id (configurations also by key).
    pub async fn get(&self, api: &Api, id: &str) -> anyhow::Result<DynamicMessage> {
        let method = self.method(api, "get", self.get)?;
        let mut request = DynamicMessage::new(method.input());
        let by_key = uuid_like(id).is_none() && method.input().get_field_by_name("key").is_some();
        set_string(&mut request, if by_key { "key" } else { "id" }, id)?;
        let response = api.call(&method, request).await?;
        self.item_of(api, &response)
    }

    async fn create(&self, api: &Api, fill: &Fill) -> anyhow::Result<DynamicMessage> {
        let method = self.method(api, "create", self.create)?;
        let mut request = DynamicMessage::new(method.input());
        // Most requests wrap the resource; some (API tokens) are flat.
        match field_of_type(&method.input(), &self.descriptor(api)?, false) {
            Ok(field) => {
                let mut item = DynamicMessage::new(self.descriptor(api)?);
                fill_message(&mut item, fill)?;
                request.set_field(&field, Value::Message(item));
            }
            Err(_) => fill_message(&mut request, fill)?,
        }
        Ok(api.call(&method, request).await?)
    }

    /// A create response holding more than the resource (a token's secret)
    /// is printed whole; its table row shows those fields beside the resource's.
    fn print_created(
        &self,
        api: &Api,
        printer: &Printer,
        response: &DynamicMessage,
    ) -> anyhow::Result<()> {
        let item = self.item_of(api, response)?;
        if response.fields().count() <= 1 {
            return printer.item(&item, self.columns);
        }
        if matches!(printer.format, Format::Json | Format::Yaml) {
            return printer.values_one(&to_json(response));
        }
        let mut row = to_json(&item);
        if let (serde_json::Value::Object(row), serde_json::Value::Object(whole)) =
            (&mut row, to_json(response))
        {
            for (key, value) in whole {
                if !value.is_object() {
                    row.insert(key, value);
                }
            }
        }
        printer.values(&[row], self.columns)
    }

    async fn update(&self, api: &Api, id: &str, fill: &Fill) -> anyhow::Result<DynamicMessage> {
        let method = self.method(api, "update", self.update)?;
        let descriptor = self.descriptor(api)?;
        // Nested fields merge into the current value: `--set schedule.paused=true`
        // keeps the schedule's cron.
        let mut item = self.get(api, id).await?;
        let mut mask: Vec<String> = Vec::new();
        if let Some(path) = &fill.file {
            let (from_file, names) = fields::read_file(descriptor.clone(), path)?;
            for name in &names {
                let field = fields::field_by_name(&descriptor, name)?;
                item.set_field(&field, from_file.get_field(&field).into_owned());
            }
            mask.extend(names);
        }
        fields::apply(&mut item, &fill.set)?;
        for assignment in &fill.set {
            mask.push(
                fields::field_by_name(&descriptor, assignment.top_level())?
                    .name()
                    .to_string(),
            );
        }
        mask.sort();
        mask.dedup();
        if mask.is_empty() {
            bail!(Usage(
                "nothing to update: give -f FILE or --set FIELD=VALUE".into()
            ));
        }
        let mut request = DynamicMessage::new(method.input());
        let field = field_of_type(&method.input(), &descriptor, false)?;
        request.set_field(&field, Value::Message(item));
        let mask_field = fields::field_by_name(&method.input(), "update_mask")?;
        let Kind::Message(mask_descriptor) = mask_field.kind() else {
            bail!("update_mask is not a message");
        };
        let mut mask_message = DynamicMessage::new(mask_descriptor);
        mask_message
            .try_set_field_by_name(
                "paths",
                Value::List(mask.into_iter().map(Value::String).collect()),
            )
            .context("update_mask.paths")?;
        request.set_field(&mask_field, Value::Message(mask_message));
        let response = api.call(&method, request).await?;
        self.item_of(api, &response)
    }

    /// Calls `method` of the resource's service on the one with `id` (a
    /// request holding only `id`, such as a rotation or a test) and prints
    /// the answer as a create answer is printed, with `shown`'s columns:
    /// the resource of that kind inside it beside any other plain fields.
    pub async fn act_on(
        &self,
        api: &Api,
        printer: &Printer,
        method: &str,
        id: &str,
        shown: &Resource,
    ) -> anyhow::Result<DynamicMessage> {
        let method = api.method(self.service, method)?;
        let mut request = DynamicMessage::new(method.input());
        set_string(&mut request, "id", id)?;
        let response = api.call(&method, request).await?;
        shown.print_created(api, printer, &response)?;
        Ok(response)
    }

    /// The resource inside a Get/Create/Update response.
    fn item_of(&self, api: &Api, response: &DynamicMessage) -> anyhow::Result<DynamicMessage> {
        let field = field_of_type(&response.descriptor(), &self.descriptor(api)?, false)?;
        response
            .get_field(&field)
            .as_message()
            .cloned()
            .context("response without the resource")
    }
}

fn fill_message(message: &mut DynamicMessage, fill: &Fill) -> anyhow::Result<()> {
    if let Some(path) = &fill.file {
        let (from_file, _) = fields::read_file(message.descriptor(), path)?;
        *message = from_file;
    }
    fields::apply(message, &fill.set)
}

/// The field of `container` holding `item` messages (repeated or single).
fn field_of_type(
    container: &MessageDescriptor,
    item: &MessageDescriptor,
    list: bool,
) -> anyhow::Result<FieldDescriptor> {
    container
        .fields()
        .find(|f| f.is_list() == list && matches!(f.kind(), Kind::Message(m) if m == *item))
        .with_context(|| format!("{} holds no {}", container.name(), item.name()))
}

fn set_string(message: &mut DynamicMessage, name: &str, value: &str) -> anyhow::Result<()> {
    message
        .try_set_field_by_name(name, Value::String(value.to_string()))
        .with_context(|| format!("{} has no string field {name}", message.descriptor().name()))
}

/// Ids are UUIDs; anything else is a name or key.
pub fn uuid_like(text: &str) -> Option<&str> {
    let hex = text.chars().filter(|c| c.is_ascii_hexdigit()).count();
    let dashes = text.chars().filter(|c| *c == '-').count();
    (text.len() == 36 && hex == 32 && dashes == 4).then_some(text)
}

const TIME: Column = Column::time("CREATED", "createTime");

/// Every resource command.
pub const RESOURCES: &[Resource] = &[
    Resource {
        name: "users",
        service: "UserService",
        message: "User",
        list: Some("ListUsers"),
        get: Some("GetUser"),
        create: Some("CreateUser"),
        update: Some("UpdateUser"),
        delete: Some("DeleteUser"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("USERNAME", "username"),
            Column::text("EMAIL", "email"),
            Column::text("ADMIN", "admin"),
            TIME,
        ],
    },
    Resource {
        name: "tokens",
        service: "UserService",
        message: "ApiToken",
        list: Some("ListApiTokens"),
        get: None,
        create: Some("CreateApiToken"),
        update: None,
        delete: Some("DeleteApiToken"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("USER", "userId"),
            Column::text("NAME", "displayName"),
            Column::enumeration("SCOPE", "scope"),
            Column::text("PREFIX", "prefix"),
            Column::time("EXPIRES", "expireTime"),
            Column::time("LAST USED", "lastUsedTime"),
            Column::text("SECRET", "secret"),
        ],
    },
    Resource {
        name: "configurations",
        service: "ConfigurationService",
        message: "Configuration",
        list: Some("ListConfigurations"),
        get: Some("GetConfiguration"),
        create: Some("CreateConfiguration"),
        update: Some("UpdateConfiguration"),
        delete: Some("DeleteConfiguration"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("KEY", "key"),
            Column::text("VALUE", "value"),
            Column::text("DESCRIPTION", "description"),
            Column::time("UPDATED", "updateTime"),
        ],
    },
    Resource {
        name: "buckets",
        service: "BucketService",
        message: "Bucket",
        list: Some("ListBuckets"),
        get: Some("GetBucket"),
        create: Some("CreateBucket"),
        update: Some("UpdateBucket"),
        delete: Some("DeleteBucket"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("NAME", "name"),
            Column::text("PATH", "filesystem.path"),
            Column::text("S3 BUCKET", "s3.bucket"),
            Column::text("S3 ENDPOINT", "s3.endpoint"),
            Column::text("PREFIX", "prefix"),
            TIME,
        ],
    },
    Resource {
        name: "jobs",
        service: "JobService",
        message: "Job",
        list: Some("ListJobs"),
        get: Some("GetJob"),
        create: Some("CreateJob"),
        update: Some("UpdateJob"),
        delete: Some("DeleteJob"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("NAME", "name"),
            Column::text("SOURCE", "sourcePath"),
            Column::text("BUCKET", "target.bucket.bucketId"),
            Column::text("PREFIX", "target.bucket.prefix"),
            Column::text("SCHEDULE", "schedule.cron"),
            Column::enumeration("LAST RUN", "lastRun.state"),
            Column::time("NEXT RUN", "nextRunTime"),
        ],
    },
    Resource {
        name: "objects",
        service: "ObjectService",
        message: "BackupObject",
        list: Some("ListObjects"),
        get: Some("GetObject"),
        create: None,
        update: None,
        delete: None,
        columns: &[
            Column::text("ID", "id"),
            Column::text("PATH", "path"),
            Column::text("JOB", "jobId"),
            Column::bytes("SIZE", "latestVersion.sizeBytes"),
            Column::time("MODIFIED", "latestVersion.mtime"),
        ],
    },
    Resource {
        name: "versions",
        service: "ObjectService",
        message: "ObjectVersion",
        list: Some("ListObjectVersions"),
        get: None,
        create: None,
        update: None,
        delete: None,
        columns: &[
            Column::text("ID", "id"),
            Column::enumeration("KIND", "kind"),
            Column::bytes("SIZE", "sizeBytes"),
            Column::time("MODIFIED", "mtime"),
            Column::text("FIRST RUN", "firstRunId"),
            Column::text("LAST RUN", "lastRunId"),
            Column::text("DELETED", "deleted"),
        ],
    },
    Resource {
        name: "latest",
        service: "ObjectService",
        message: "BackupObject",
        list: Some("ListLatestVersions"),
        get: None,
        create: None,
        update: None,
        delete: None,
        columns: &[
            Column::text("ID", "id"),
            Column::text("PATH", "path"),
            Column::bytes("SIZE", "latestVersion.sizeBytes"),
            Column::time("MODIFIED", "latestVersion.mtime"),
            Column::text("DELETED", "latestVersion.deleted"),
        ],
    },
    Resource {
        name: "duplicates",
        service: "ObjectService",
        message: "DuplicateGroup",
        list: Some("ListDuplicates"),
        get: None,
        create: None,
        update: None,
        delete: None,
        columns: &[
            Column::text("CONTENT HASH", "contentHash"),
            Column::bytes("SIZE", "sizeBytes"),
            Column::bytes("SAVED", "savedBytes"),
            Column::text("FILES", "files"),
        ],
    },
    Resource {
        name: "tags",
        service: "TagService",
        message: "Tag",
        list: Some("ListTags"),
        get: Some("GetTag"),
        create: Some("CreateTag"),
        update: Some("UpdateTag"),
        delete: Some("DeleteTag"),
        columns: &[
            Column::text("ID", "id"),
            Column::enumeration("ON", "resource.kind"),
            Column::text("RESOURCE", "resource.id"),
            Column::text("KEY", "key"),
            Column::text("VALUE", "value"),
        ],
    },
    Resource {
        name: "policies",
        service: "RetentionService",
        message: "RetentionPolicy",
        list: Some("ListRetentionPolicies"),
        get: Some("GetRetentionPolicy"),
        create: Some("CreateRetentionPolicy"),
        update: Some("UpdateRetentionPolicy"),
        delete: Some("DeleteRetentionPolicy"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("NAME", "name"),
            Column::text("LAST", "keepLast"),
            Column::text("HOURLY", "keepHourly"),
            Column::text("DAILY", "keepDaily"),
            Column::text("WEEKLY", "keepWeekly"),
            Column::text("MONTHLY", "keepMonthly"),
            Column::text("YEARLY", "keepYearly"),
            Column::text("WITHIN", "keepWithin"),
            Column::text("TIME ZONE", "timeZone"),
        ],
    },
    Resource {
        name: "holds",
        service: "RetentionService",
        message: "ObjectRetention",
        list: Some("ListObjectRetentions"),
        get: Some("GetObjectRetention"),
        create: Some("CreateObjectRetention"),
        update: Some("UpdateObjectRetention"),
        delete: Some("DeleteObjectRetention"),
        columns: &[
            Column::text("ID", "id"),
            Column::enumeration("ON", "resource.kind"),
            Column::text("RESOURCE", "resource.id"),
            Column::text("POLICY", "policyId"),
            Column::time("RETAIN UNTIL", "retainUntilTime"),
            Column::text("LEGAL HOLD", "legalHold"),
        ],
    },
    Resource {
        name: "grants",
        service: "GrantService",
        message: "Grant",
        list: Some("ListGrants"),
        get: Some("GetGrant"),
        create: Some("CreateGrant"),
        update: None,
        delete: Some("DeleteGrant"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("GRANTEE", "granteeId"),
            Column::text("ROOT", "root"),
            Column::text("USES", "uses"),
            Column::text("WORKERS", "workerSelector"),
            TIME,
        ],
    },
    Resource {
        name: "commands",
        service: "CommandService",
        message: "Command",
        list: Some("ListCommands"),
        get: Some("GetCommand"),
        create: Some("CreateCommand"),
        update: None,
        delete: Some("DeleteCommand"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("NAME", "name"),
            Column::text("PROGRAM", "executable"),
            Column::text("OUTPUT", "outputFileName"),
            Column::text("TIMEOUT", "timeout"),
            TIME,
        ],
    },
    Resource {
        name: "metadata",
        service: "BackupMetadataService",
        message: "BackupMetadata",
        list: Some("ListBackupMetadata"),
        get: Some("GetBackupMetadata"),
        create: Some("CreateBackupMetadata"),
        update: Some("UpdateBackupMetadata"),
        delete: Some("DeleteBackupMetadata"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("JOB", "jobId"),
            Column::text("RUN", "runId"),
            Column::enumeration("SOURCE", "source"),
            Column::bytes("SIZE", "sizeBytes"),
            Column::text("SECONDS", "durationSeconds"),
            Column::text("DETAILS", "details"),
        ],
    },
    Resource {
        name: "workers",
        service: "WorkerService",
        message: "Worker",
        list: Some("ListWorkers"),
        get: None,
        create: None,
        update: None,
        delete: None,
        columns: &[
            Column::text("ID", "id"),
            Column::text("NAME", "name"),
            Column::text("CONNECTED", "connected"),
            Column::text("SLOTS", "slots"),
            Column::text("LABELS", "labels"),
            Column::time("LAST SEEN", "lastSeenTime"),
        ],
    },
    Resource {
        name: "audit",
        service: "AuditService",
        message: "AuditEvent",
        list: Some("ListAuditEvents"),
        get: None,
        create: None,
        update: None,
        delete: None,
        columns: &[
            Column::time("TIME", "time"),
            Column::text("ACTOR", "actorUserId"),
            Column::text("ACTION", "action"),
            Column::text("TARGETS", "targetIds"),
            Column::text("RESULT", "result"),
            Column::text("PEER", "peer"),
        ],
    },
    Resource {
        name: "channels",
        service: "NotificationService",
        message: "NotificationChannel",
        list: Some("ListNotificationChannels"),
        get: Some("GetNotificationChannel"),
        create: Some("CreateNotificationChannel"),
        update: None,
        delete: Some("DeleteNotificationChannel"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("NAME", "name"),
            Column::text("WEBHOOK", "webhook.url"),
            Column::enumeration("FORMAT", "webhook.format"),
            Column::text("SMTP HOST", "email.host"),
            Column::text("TO", "email.to"),
            TIME,
            Column::text("SIGNING SECRET", "signingSecret"),
        ],
    },
    Resource {
        name: "rules",
        service: "NotificationService",
        message: "NotificationRule",
        list: Some("ListNotificationRules"),
        get: Some("GetNotificationRule"),
        create: Some("CreateNotificationRule"),
        update: None,
        delete: Some("DeleteNotificationRule"),
        columns: &[
            Column::text("ID", "id"),
            Column::text("CHANNEL", "channelId"),
            Column::text("JOB", "jobId"),
            Column::text("ALL OWNERS", "allOwners"),
            Column::text("EVENTS", "events"),
            TIME,
        ],
    },
    Resource {
        name: "deliveries",
        service: "NotificationService",
        message: "NotificationDelivery",
        list: Some("ListNotificationDeliveries"),
        get: None,
        create: None,
        update: None,
        delete: None,
        columns: &[
            Column::text("ID", "id"),
            Column::text("CHANNEL", "channelId"),
            Column::enumeration("EVENT", "event"),
            Column::enumeration("STATE", "state"),
            Column::text("ATTEMPTS", "attempts"),
            Column::text("HTTP", "httpStatus"),
            Column::text("LAST ERROR", "lastError"),
            Column::time("NEXT ATTEMPT", "nextAttemptTime"),
        ],
    },
];

/// The resource command named `name`.
pub fn resource(name: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.name == name)
        .expect("every resource command has an entry in RESOURCES")
}
