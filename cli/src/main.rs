//! `coffer`: the command-line client of the Coffer API. It speaks only the
//! public `coffer.v1` gRPC API, like any other client.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use coffer_proto::v1 as pb;

mod connection;
mod context;
mod download;
mod failure;
mod fields;
mod output;
mod progress;
mod resources;
mod runs;
mod snapshots;

use connection::{to_dynamic, Api};
use context::{Config, Overrides};
use output::{Column, Format, Printer};
use resources::{resource, Verb};
use runs::{RepositoryArgs, RestoreArgs, Wait};

const EXIT_CODES: &str = "\
Exit codes: 0 success; 1 a run ended without succeeding; 2 wrong command line;
3 the server refused the request (its field violations are printed);
4 anything else (config, files, connection).

The token comes from --token-file, else COFFER_TOKEN, else the context
(`coffer login`). Contexts live in $XDG_CONFIG_HOME/coffer/config.yaml.";

/// The command-line client of Coffer.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Global {
    /// The context to use instead of the current one.
    #[arg(long, global = true, env = "COFFER_CONTEXT")]
    context: Option<String>,
    /// The control plane: `host:port` (TLS), `https://…`, or `http://…` (plaintext).
    #[arg(long, global = true, env = "COFFER_ENDPOINT")]
    endpoint: Option<String>,
    /// The CA that signed the server's certificate (a standalone server's is
    /// `coffer-data/tls/ca.pem`); the system's roots otherwise.
    #[arg(long, global = true, env = "COFFER_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// A file holding the API token.
    #[arg(long, global = true, env = "COFFER_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Output of commands that print resources.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Times in UTC instead of local time.
    #[arg(long, global = true)]
    utc: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a token against a control plane and save both as a context.
    Login(LoginArgs),
    /// Saved control planes.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Who the token belongs to.
    Whoami,
    /// Users (admins manage them).
    #[command(subcommand)]
    Users(Verb),
    /// API tokens (`create --set user_id=ID --set display_name=NAME` prints the secret once).
    #[command(subcommand)]
    Tokens(Verb),
    /// Configuration values.
    #[command(subcommand)]
    Configurations(Verb),
    /// Storage targets.
    #[command(subcommand)]
    Buckets(Verb),
    /// Backup jobs.
    #[command(subcommand)]
    Jobs(Verb),
    /// Runs: list, show, follow, errors, cancel.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// The snapshots (successful backups) of a job.
    Snapshots {
        /// The job (id or name).
        job: String,
    },
    /// Backed-up objects (one per path).
    #[command(subcommand)]
    Objects(Verb),
    /// Versions of an object (`list --filter object_id=ID`).
    #[command(subcommand)]
    Versions(Verb),
    /// The latest version of each object.
    #[command(subcommand)]
    Latest(Verb),
    /// Files stored once for several paths.
    #[command(subcommand)]
    Duplicates(Verb),
    /// Key/value tags on runs, objects, versions, jobs and buckets.
    #[command(subcommand)]
    Tags(Verb),
    /// Retention policies.
    #[command(subcommand)]
    Policies(Verb),
    /// Object retention: per-object policies, retain-until times and legal holds.
    #[command(subcommand)]
    Holds(Verb),
    /// Data-plane grants (admins).
    #[command(subcommand)]
    Grants(Verb),
    /// Admin-defined commands: backup sources and hooks.
    #[command(subcommand)]
    Commands(Verb),
    /// Managed S3 credentials; values are read from a file or stdin, never shown.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Backup metadata (recorded by runs, or added by hand).
    #[command(subcommand)]
    Metadata(Verb),
    /// Workers the control plane knows.
    #[command(subcommand)]
    Workers(Verb),
    /// The audit log (admins).
    #[command(subcommand)]
    Audit(Verb),
    /// Notification channels: webhooks (`create` prints the signing secret
    /// once) and e-mail; `rotate` and `test` besides.
    #[command(subcommand)]
    Channels(ChannelsCommand),
    /// Notification rules: which events of which jobs reach a channel.
    #[command(subcommand)]
    Rules(Verb),
    /// Notification deliveries: state, attempts, last error.
    #[command(subcommand)]
    Deliveries(Verb),
    /// Back up a job now.
    Backup {
        /// The job (id or name).
        job: String,
        /// Only walk the source and list what the exclusions leave out
        /// (`coffer runs exclusions RUN`); nothing is stored.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Restore a snapshot to a directory.
    Restore(RestoreArgs),
    /// Verify a snapshot's data in storage.
    Verify {
        /// The snapshot (backup run id).
        snapshot: String,
        /// How much of the data to read back and re-hash (0 checks existence only).
        #[arg(long, default_value_t = 0.0)]
        read_data_percent: f64,
        #[command(flatten)]
        wait: Wait,
    },
    /// Copy a snapshot into another bucket's repository (3-2-1).
    Copy {
        /// The snapshot (backup run id).
        snapshot: String,
        /// The bucket the copy goes to (id).
        #[arg(long = "to", value_name = "BUCKET")]
        to: String,
        /// The repository's prefix inside the bucket.
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Collect garbage in a repository.
    Gc {
        #[command(flatten)]
        repository: RepositoryArgs,
        /// Keep condemned data this long before deleting it (30s, 15m, 1h, 2d).
        #[arg(long, value_parser = runs::parse_duration)]
        grace: Option<prost_types::Duration>,
        /// Repack packs with more than this much garbage.
        #[arg(long, default_value_t = 0.0)]
        repack_threshold_percent: f64,
        #[command(flatten)]
        wait: Wait,
    },
    /// Plan or apply retention.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Add, remove or rotate an encrypted repository's key slots.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List a snapshot as a tree.
    Ls {
        /// The snapshot (backup run id).
        snapshot: String,
        /// Only beneath this path of the snapshot.
        path: Option<String>,
    },
    /// What changed between two snapshots.
    Diff {
        /// The older snapshot.
        first: String,
        /// The newer snapshot.
        second: String,
    },
    /// Download one file of a snapshot (read by a worker, streamed through
    /// the control plane).
    Download {
        /// The snapshot (backup run id).
        snapshot: String,
        /// The file's path in the snapshot.
        path: String,
        /// Where to write it (default: its name in the current directory;
        /// `-` for standard output).
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
    /// Print the man page, or write one per command into a directory.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct LoginArgs {
    /// Save as this context (default: `default`).
    #[arg(long = "name", default_value = "default")]
    name: String,
}

#[derive(Debug, Subcommand)]
enum ContextCommand {
    /// The saved contexts.
    List,
    /// Make a context the current one.
    Use { name: String },
    /// Forget a context (and its token).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// List runs (filters: job_id, state, kind, tag_key, tag_value).
    List {
        #[arg(long = "filter", value_name = "FIELD=VALUE")]
        filters: Vec<fields::Assignment>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show a run.
    Get { id: String },
    /// Follow a run to its end with live progress; exit 0 only if it succeeded.
    Watch { id: String },
    /// The files a run could not handle, and why.
    Errors { id: String },
    /// The paths a dry run found excluded, and the rule that excluded each.
    Exclusions { id: String },
    /// Ask a run to stop.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// List secrets (never their values).
    List,
    /// Show a secret (never its values).
    Get { id: String },
    /// Store S3 credentials (`--values`) or a repository passphrase
    /// (`--passphrase-file`).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        values: SecretValuesArgs,
    },
    /// Replace a secret's values (of the same kind).
    Rotate {
        id: String,
        #[command(flatten)]
        values: SecretValuesArgs,
    },
    /// Delete a secret.
    Delete { id: String },
}

/// Where a secret's values come from: files or stdin, never the command line.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct SecretValuesArgs {
    /// YAML or JSON with access_key_id, secret_access_key and optionally
    /// session_token; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    values: Option<PathBuf>,
    /// A file holding a repository passphrase (one trailing newline is
    /// dropped); `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ChannelsCommand {
    #[command(flatten)]
    Resource(Verb),
    /// Replace a webhook's signing secret; prints the new one once.
    Rotate { id: String },
    /// Send a test notice now; exit 0 only if it was delivered.
    Test { id: String },
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Which snapshots the policy keeps, and why (changes nothing).
    Plan(RepositoryArgs),
    /// Remove the snapshots the plan does not keep.
    Apply {
        #[command(flatten)]
        repository: RepositoryArgs,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a passphrase slot from a passphrase secret of the repository's owner.
    Add {
        #[command(flatten)]
        repository: RepositoryArgs,
        /// The passphrase secret (id).
        #[arg(long)]
        passphrase_secret: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove a slot (a rotation that leaves it out).
    Remove {
        #[command(flatten)]
        repository: RepositoryArgs,
        /// The slot's id (as `coffer buckets get` shows it).
        slot: String,
        /// Passphrase secrets (ids) whose slots the rotation keeps.
        #[arg(long)]
        keep: Vec<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Start a new key generation for new data.
    Rotate {
        #[command(flatten)]
        repository: RepositoryArgs,
        /// Passphrase secrets (ids) whose slots the rotation keeps.
        #[arg(long)]
        keep: Vec<String>,
        #[command(flatten)]
        wait: Wait,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprint!("{}", failure::render(&error));
            ExitCode::from(failure::exit_code(&error))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let printer = Printer {
        format: cli.global.output,
        utc: cli.global.utc,
    };
    let overrides = Overrides {
        context: cli.global.context.clone(),
        endpoint: cli.global.endpoint.clone(),
        cacert: cli.global.cacert.clone(),
        token_file: cli.global.token_file.clone(),
        token: std::env::var("COFFER_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    let config_path = context::config_path()?;
    let config = Config::load(&config_path)?;
    let command = match cli.command {
        Command::Completion { shell } => {
            // Into a buffer first: the generator panics on a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "coffer", &mut script);
            return output::emit(&String::from_utf8_lossy(&script));
        }
        Command::Man { dir } => return man(dir),
        Command::Context(command) => return context_command(config, &config_path, command),
        Command::Login(args) => return login(config, &config_path, &overrides, &args).await,
        remote => remote,
    };
    let api = Api::connect(&overrides.resolve(&config)?)?;
    match command {
        Command::Whoami => {
            let user = api
                .users()
                .get_current_user(pb::GetCurrentUserRequest {})
                .await?
                .into_inner()
                .user
                .context("no user")?;
            printer.item(
                &to_dynamic(api.pool(), "User", &user)?,
                resource("users").columns,
            )
        }
        Command::Users(verb) => resource("users").run(&api, &printer, verb).await,
        Command::Tokens(verb) => resource("tokens").run(&api, &printer, verb).await,
        Command::Configurations(verb) => resource("configurations").run(&api, &printer, verb).await,
        Command::Buckets(verb) => resource("buckets").run(&api, &printer, verb).await,
        Command::Jobs(verb) => resource("jobs").run(&api, &printer, verb).await,
        Command::Objects(verb) => resource("objects").run(&api, &printer, verb).await,
        Command::Versions(verb) => resource("versions").run(&api, &printer, verb).await,
        Command::Latest(verb) => resource("latest").run(&api, &printer, verb).await,
        Command::Duplicates(verb) => resource("duplicates").run(&api, &printer, verb).await,
        Command::Tags(verb) => resource("tags").run(&api, &printer, verb).await,
        Command::Policies(verb) => resource("policies").run(&api, &printer, verb).await,
        Command::Holds(verb) => resource("holds").run(&api, &printer, verb).await,
        Command::Grants(verb) => resource("grants").run(&api, &printer, verb).await,
        Command::Commands(verb) => resource("commands").run(&api, &printer, verb).await,
        Command::Metadata(verb) => resource("metadata").run(&api, &printer, verb).await,
        Command::Workers(verb) => resource("workers").run(&api, &printer, verb).await,
        Command::Audit(verb) => resource("audit").run(&api, &printer, verb).await,
        Command::Channels(command) => channels_command(&api, &printer, command).await,
        Command::Rules(verb) => resource("rules").run(&api, &printer, verb).await,
        Command::Deliveries(verb) => resource("deliveries").run(&api, &printer, verb).await,
        Command::Runs(command) => runs_command(&api, &printer, command).await,
        Command::Secrets(command) => secrets_command(&api, &printer, command).await,
        Command::Snapshots { job } => snapshots::list(&api, &printer, &job).await,
        Command::Backup { job, dry_run, wait } => {
            let job_id = runs::job_id(&api, &job).await?;
            let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
                job_id,
                dry_run,
                ..Default::default()
            });
            runs::start(&api, &printer, spec, wait.wait).await
        }
        Command::Restore(args) => runs::start(&api, &printer, args.spec()?, args.wait.wait).await,
        Command::Verify {
            snapshot,
            read_data_percent,
            wait,
        } => {
            let spec = pb::create_run_request::Spec::Verify(pb::VerifySpec {
                snapshot_run_id: snapshot,
                read_data_percent,
            });
            runs::start(&api, &printer, spec, wait.wait).await
        }
        Command::Copy {
            snapshot,
            to,
            prefix,
            wait,
        } => {
            let spec = pb::create_run_request::Spec::Copy(pb::CopySpec {
                snapshot_run_id: snapshot,
                target: Some(pb::Target {
                    destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                        bucket_id: to,
                        prefix,
                    })),
                }),
            });
            runs::start(&api, &printer, spec, wait.wait).await
        }
        Command::Gc {
            repository,
            grace,
            repack_threshold_percent,
            wait,
        } => {
            let target = runs::repository_target(&api, &repository).await?;
            let spec = pb::create_run_request::Spec::GarbageCollection(pb::GarbageCollectionSpec {
                target: Some(target),
                grace_period: grace,
                repack_threshold_percent,
            });
            runs::start(&api, &printer, spec, wait.wait).await
        }
        Command::Keys(keys) => {
            let (repository, operation, secret, slot, keep, wait) = match keys {
                KeysCommand::Add {
                    repository,
                    passphrase_secret,
                    wait,
                } => (
                    repository,
                    pb::KeySlotOperation::Add,
                    passphrase_secret,
                    String::new(),
                    Vec::new(),
                    wait,
                ),
                KeysCommand::Remove {
                    repository,
                    slot,
                    keep,
                    wait,
                } => (
                    repository,
                    pb::KeySlotOperation::Remove,
                    String::new(),
                    slot,
                    keep,
                    wait,
                ),
                KeysCommand::Rotate {
                    repository,
                    keep,
                    wait,
                } => (
                    repository,
                    pb::KeySlotOperation::Rotate,
                    String::new(),
                    String::new(),
                    keep,
                    wait,
                ),
            };
            let target = runs::repository_target(&api, &repository).await?;
            let spec = pb::create_run_request::Spec::KeySlots(pb::KeySlotsSpec {
                target: Some(target),
                operation: operation.into(),
                passphrase_secret_id: secret,
                slot_id: slot,
                keep_passphrase_secret_ids: keep,
            });
            runs::start(&api, &printer, spec, wait.wait).await
        }
        Command::Retention(RetentionCommand::Plan(repository)) => {
            runs::plan(&api, &printer, &repository).await
        }
        Command::Retention(RetentionCommand::Apply { repository, wait }) => {
            runs::apply(&api, &printer, &repository, wait.wait).await
        }
        Command::Ls { snapshot, path } => {
            snapshots::ls(&api, &printer, &snapshot, path.as_deref()).await
        }
        Command::Diff { first, second } => snapshots::diff(&api, &printer, &first, &second).await,
        Command::Download {
            snapshot,
            path,
            to,
            force,
        } => download::download(&api, &snapshot, &path, to.as_deref(), force).await,
        Command::Login(_)
        | Command::Context(_)
        | Command::Completion { .. }
        | Command::Man { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

const ERROR_COLUMNS: &[Column] = &[
    Column::text("PATH", "path"),
    Column::text("ERROR", "message"),
    Column::text("ATTEMPT", "attempt"),
    Column::time("TIME", "createTime"),
];

const EXCLUSION_COLUMNS: &[Column] = &[
    Column::text("PATH", "path"),
    Column::enumeration("REASON", "reason"),
    Column::text("RULE", "rule"),
    Column::text("SOURCE", "source"),
    Column::bytes("SIZE", "sizeBytes"),
];

/// What a run recorded per path, listed by `list` (with `run_id`).
fn run_records(
    name: &'static str,
    message: &'static str,
    list: &'static str,
    columns: &'static [Column],
) -> resources::Resource {
    resources::Resource {
        name,
        service: "RunService",
        message,
        list: Some(list),
        get: None,
        create: None,
        update: None,
        delete: None,
        columns,
    }
}

/// Prints every record of `records` for run `id`.
async fn list_run_records(
    api: &Api,
    printer: &Printer,
    records: &resources::Resource,
    id: String,
) -> anyhow::Result<()> {
    let filter = fields::Assignment {
        path: "run_id".into(),
        value: id,
    };
    let items = records.list(api, &[filter], None).await?;
    printer.items(&items, records.columns)
}

async fn runs_command(api: &Api, printer: &Printer, command: RunsCommand) -> anyhow::Result<()> {
    let runs = resources::Resource {
        name: "runs",
        service: "RunService",
        message: "Run",
        list: Some("ListRuns"),
        get: Some("GetRun"),
        create: None,
        update: None,
        delete: None,
        columns: runs::RUN_COLUMNS,
    };
    match command {
        RunsCommand::List { filters, limit } => {
            runs.run(api, printer, Verb::List { filters, limit }).await
        }
        RunsCommand::Get { id } => runs.run(api, printer, Verb::Get { id }).await,
        RunsCommand::Watch { id } => runs::finish(api, printer, id, true).await,
        RunsCommand::Errors { id } => {
            let errors = run_records("errors", "RunError", "ListRunErrors", ERROR_COLUMNS);
            list_run_records(api, printer, &errors, id).await
        }
        RunsCommand::Exclusions { id } => {
            let exclusions = run_records(
                "exclusions",
                "RunExclusion",
                "ListRunExclusions",
                EXCLUSION_COLUMNS,
            );
            list_run_records(api, printer, &exclusions, id).await
        }
        RunsCommand::Cancel { id } => {
            let run = api
                .runs()
                .cancel_run(pb::CancelRunRequest { id })
                .await?
                .into_inner()
                .run
                .context("no run")?;
            printer.item(&to_dynamic(api.pool(), "Run", &run)?, runs::RUN_COLUMNS)
        }
    }
}

async fn channels_command(
    api: &Api,
    printer: &Printer,
    command: ChannelsCommand,
) -> anyhow::Result<()> {
    let channels = resource("channels");
    match command {
        ChannelsCommand::Resource(verb) => channels.run(api, printer, verb).await,
        ChannelsCommand::Rotate { id } => {
            let method = "RotateNotificationChannelSecret";
            channels.act_on(api, printer, method, &id, channels).await?;
            Ok(())
        }
        ChannelsCommand::Test { id } => {
            let deliveries = resource("deliveries");
            let method = "TestNotificationChannel";
            let answer = channels
                .act_on(api, printer, method, &id, deliveries)
                .await?;
            let delivered = answer
                .get_field_by_name("delivery")
                .and_then(|delivery| {
                    let delivery = delivery.as_message()?.clone();
                    let state = delivery.get_field_by_name("state")?.as_enum_number()?;
                    Some(state == pb::NotificationDeliveryState::Delivered as i32)
                })
                .unwrap_or(false);
            if !delivered {
                anyhow::bail!("the test notice was not delivered");
            }
            Ok(())
        }
    }
}

async fn secrets_command(
    api: &Api,
    printer: &Printer,
    command: SecretsCommand,
) -> anyhow::Result<()> {
    const COLUMNS: &[Column] = &[
        Column::text("ID", "id"),
        Column::text("NAME", "name"),
        Column::text("KIND", "kind"),
        Column::text("ACCESS KEY", "accessKeyIdHint"),
        Column::text("SESSION TOKEN", "hasSessionToken"),
        Column::time("UPDATED", "updateTime"),
    ];
    let secrets = resources::Resource {
        name: "secrets",
        service: "SecretService",
        message: "Secret",
        list: Some("ListSecrets"),
        get: Some("GetSecret"),
        create: None,
        update: None,
        delete: Some("DeleteSecret"),
        columns: COLUMNS,
    };
    let secret = match command {
        SecretsCommand::List => {
            return secrets
                .run(
                    api,
                    printer,
                    Verb::List {
                        filters: vec![],
                        limit: None,
                    },
                )
                .await
        }
        SecretsCommand::Get { id } => return secrets.run(api, printer, Verb::Get { id }).await,
        SecretsCommand::Delete { id } => {
            return secrets
                .run(api, printer, Verb::Delete { id, force: false })
                .await
        }
        SecretsCommand::Create {
            name,
            description,
            values,
        } => {
            let (s3, passphrase) = secret_values(api, &values)?;
            let secret = pb::Secret {
                name,
                description,
                ..Default::default()
            };
            api.secrets()
                .create_secret(pb::CreateSecretRequest {
                    secret: Some(secret),
                    s3,
                    passphrase,
                })
                .await?
                .into_inner()
                .secret
        }
        SecretsCommand::Rotate { id, values } => {
            let (s3, passphrase) = secret_values(api, &values)?;
            api.secrets()
                .rotate_secret(pb::RotateSecretRequest { id, s3, passphrase })
                .await?
                .into_inner()
                .secret
        }
    };
    let secret = secret.context("the answer holds no secret")?;
    printer.item(&to_dynamic(api.pool(), "Secret", &secret)?, COLUMNS)
}

/// Secret values from a file or stdin, never from the command line: S3
/// credentials or a passphrase.
fn secret_values(
    api: &Api,
    args: &SecretValuesArgs,
) -> anyhow::Result<(Option<pb::S3CredentialValues>, Option<pb::PassphraseValue>)> {
    if let Some(path) = &args.passphrase_file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        };
        let passphrase = text
            .strip_suffix('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .unwrap_or(&text)
            .to_owned();
        return Ok((None, Some(pb::PassphraseValue { passphrase })));
    }
    let path = args
        .values
        .as_ref()
        .context("--values or --passphrase-file is required")?;
    let descriptor = connection::message_descriptor(api.pool(), "S3CredentialValues")?;
    let (message, _) = fields::read_file(descriptor, path)?;
    Ok((Some(connection::to_typed(&message)?), None))
}

fn man(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let command = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            output::emit(&String::from_utf8_lossy(&page))?;
        }
    }
    Ok(())
}

fn context_command(
    mut config: Config,
    path: &std::path::Path,
    command: ContextCommand,
) -> anyhow::Result<()> {
    match command {
        ContextCommand::List => {
            let mut table = output::new_table(["CURRENT", "NAME", "ENDPOINT", "CA"]);
            for (name, context) in &config.contexts {
                let current = if config.current.as_deref() == Some(name) {
                    "*"
                } else {
                    ""
                };
                let ca = context
                    .cacert
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                table.add_row([
                    current.to_string(),
                    name.clone(),
                    context.endpoint.clone(),
                    ca,
                ]);
            }
            output::emit_line(&table)?;
            Ok(())
        }
        ContextCommand::Use { name } => {
            if !config.contexts.contains_key(&name) {
                anyhow::bail!(failure::Usage(format!(
                    "no context named {name:?} (coffer context list)"
                )));
            }
            config.current = Some(name);
            config.save(path)
        }
        ContextCommand::Delete { name } => {
            if config.contexts.remove(&name).is_none() {
                anyhow::bail!(failure::Usage(format!("no context named {name:?}")));
            }
            if config.current.as_deref() == Some(&name) {
                config.current = None;
            }
            config.save(path)
        }
    }
}

/// Reads the token (file, environment, or typed without echo), checks it with
/// the server, and saves the context as the current one.
async fn login(
    mut config: Config,
    path: &std::path::Path,
    overrides: &Overrides,
    args: &LoginArgs,
) -> anyhow::Result<()> {
    let mut overrides = overrides.clone();
    if overrides.token_file.is_none() && overrides.token.is_none() {
        overrides.token = Some(read_token_from_stdin()?);
    }
    // Only the context being written counts, not the current one.
    overrides.context = config
        .contexts
        .contains_key(&args.name)
        .then(|| args.name.clone());
    let target = overrides.resolve(&config)?;
    let api = Api::connect(&target)?;
    let user = api
        .users()
        .get_current_user(pb::GetCurrentUserRequest {})
        .await
        .context("checking the token")?
        .into_inner()
        .user
        .context("no user")?;
    let previous = config.contexts.get(&args.name).cloned().unwrap_or_default();
    let cacert = match overrides.cacert.or(previous.cacert) {
        Some(ca) => Some(std::path::absolute(&ca)?),
        None => None,
    };
    config.contexts.insert(
        args.name.clone(),
        context::Context {
            endpoint: target.endpoint.clone(),
            cacert,
            token: target.token.clone(),
        },
    );
    config.current = Some(args.name.clone());
    config.save(path)?;
    eprintln!(
        "logged in to {} as {} (context {:?}, saved in {})",
        target.endpoint,
        user.username,
        args.name,
        path.display()
    );
    Ok(())
}

fn read_token_from_stdin() -> anyhow::Result<String> {
    let token = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("API token: ")?
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        anyhow::bail!(failure::Usage(
            "no token: use --token-file, COFFER_TOKEN or type it".into()
        ));
    }
    Ok(token)
}
