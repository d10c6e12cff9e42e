//! The typed client of [`super::TestServer`]: every service client of the API
//! over one channel, each call carrying one caller's token, and the fixtures
//! that tests across the suite build through those calls.

use std::time::Duration;

use coffer_proto::v1 as pb;
use pb::backup_metadata_service_client::BackupMetadataServiceClient;
use pb::bucket_service_client::BucketServiceClient;
use pb::command_service_client::CommandServiceClient;
use pb::configuration_service_client::ConfigurationServiceClient;
use pb::copy_service_client::CopyServiceClient;
use pb::download_service_client::DownloadServiceClient;
use pb::grant_service_client::GrantServiceClient;
use pb::job_service_client::JobServiceClient;
use pb::notification_service_client::NotificationServiceClient;
use pb::object_service_client::ObjectServiceClient;
use pb::retention_service_client::RetentionServiceClient;
use pb::run_service_client::RunServiceClient;
use pb::secret_service_client::SecretServiceClient;
use pb::tag_service_client::TagServiceClient;
use pb::user_service_client::UserServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Every use a grant can allow.
pub const ALL_USES: &[pb::GrantUse] = &[
    pb::GrantUse::BackupSource,
    pb::GrantUse::RestoreDestination,
    pb::GrantUse::Repository,
    pb::GrantUse::InPlaceRestore,
];

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A service client whose calls carry one caller's token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The API as one caller sees it: one client per service, each call already
/// carrying the caller's token (messages go in without `Request::new`).
#[derive(Clone)]
pub struct Api {
    /// `UserService`.
    pub users: UserServiceClient<Authed>,
    /// `BucketService`.
    pub buckets: BucketServiceClient<Authed>,
    /// `ConfigurationService`.
    pub configurations: ConfigurationServiceClient<Authed>,
    /// `DownloadService`.
    pub downloads: DownloadServiceClient<Authed>,
    /// `GrantService`.
    pub grants: GrantServiceClient<Authed>,
    /// `JobService`.
    pub jobs: JobServiceClient<Authed>,
    /// `BackupMetadataService`.
    pub metadata: BackupMetadataServiceClient<Authed>,
    /// `NotificationService`.
    pub notifications: NotificationServiceClient<Authed>,
    /// `ObjectService`.
    pub objects: ObjectServiceClient<Authed>,
    /// `RetentionService`.
    pub retention: RetentionServiceClient<Authed>,
    /// `RunService`.
    pub runs: RunServiceClient<Authed>,
    /// `SecretService`.
    pub secrets: SecretServiceClient<Authed>,
    /// `TagService`.
    pub tags: TagServiceClient<Authed>,
    /// `WorkerService`.
    pub workers: WorkerServiceClient<Authed>,
    /// `CommandService`.
    pub commands: CommandServiceClient<Authed>,
    /// `CopyService`.
    pub copies: CopyServiceClient<Authed>,
}

impl Api {
    /// Clients over `channel` calling as the holder of `token`.
    pub fn new(channel: Channel, token: &str) -> Api {
        let bearer = Bearer(format!("Bearer {token}").parse().expect("a token is ASCII"));
        let authed = || InterceptedService::new(channel.clone(), bearer.clone());
        Api {
            users: UserServiceClient::new(authed()),
            buckets: BucketServiceClient::new(authed()),
            configurations: ConfigurationServiceClient::new(authed()),
            downloads: DownloadServiceClient::new(authed()),
            grants: GrantServiceClient::new(authed()),
            jobs: JobServiceClient::new(authed()),
            metadata: BackupMetadataServiceClient::new(authed()),
            notifications: NotificationServiceClient::new(authed()),
            objects: ObjectServiceClient::new(authed()),
            retention: RetentionServiceClient::new(authed()),
            runs: RunServiceClient::new(authed()),
            secrets: SecretServiceClient::new(authed()),
            tags: TagServiceClient::new(authed()),
            workers: WorkerServiceClient::new(authed()),
            commands: CommandServiceClient::new(authed()),
            copies: CopyServiceClient::new(authed()),
        }
    }

    /// Creates a user (the caller must be an admin) and a user token for it:
    /// `(user, token secret)`. The user gets a grant on `/` for every use,
    /// so tests about other things need not think about grants; attack
    /// tests use [`Api::create_user_without_grants`].
    pub async fn create_user_with_token(&self, username: &str) -> (pb::User, String) {
        let (user, token) = self.create_user_without_grants(username).await;
        self.grant(&user.id, "/", ALL_USES)
            .await
            .expect("grant the new user everything");
        (user, token)
    }

    /// Creates a user with a token and no grant: `(user, token secret)`.
    pub async fn create_user_without_grants(&self, username: &str) -> (pb::User, String) {
        let mut users = self.users.clone();
        let user = users
            .create_user(pb::CreateUserRequest {
                user: Some(pb::User {
                    username: username.to_string(),
                    email: format!("{username}@example.com"),
                    ..Default::default()
                }),
            })
            .await
            .expect("create user")
            .into_inner()
            .user
            .expect("user in response");
        let token = users
            .create_api_token(pb::CreateApiTokenRequest {
                user_id: user.id.clone(),
                display_name: "test".to_string(),
                ..Default::default()
            })
            .await
            .expect("create token")
            .into_inner()
            .secret;
        (user, token)
    }

    /// `GrantService/CreateGrant`: a grant for `grantee_id` on `root` for
    /// `uses`, on any worker, without ownership or special bits.
    pub async fn grant(
        &self,
        grantee_id: &str,
        root: &str,
        uses: &[pb::GrantUse],
    ) -> Result<pb::Grant, Status> {
        self.create_grant(pb::Grant {
            grantee_id: grantee_id.to_string(),
            root: root.to_string(),
            uses: uses.iter().map(|u| *u as i32).collect(),
            ..Default::default()
        })
        .await
    }

    /// `GrantService/CreateGrant`.
    pub async fn create_grant(&self, grant: pb::Grant) -> Result<pb::Grant, Status> {
        let request = pb::CreateGrantRequest { grant: Some(grant) };
        let response = self.grants.clone().create_grant(request).await?;
        Ok(response
            .into_inner()
            .grant
            .expect("CreateGrant returns the grant"))
    }

    /// `BucketService/CreateBucket`.
    pub async fn create_bucket(&self, bucket: pb::Bucket) -> Result<pb::Bucket, Status> {
        let request = pb::CreateBucketRequest {
            bucket: Some(bucket),
        };
        let response = self.buckets.clone().create_bucket(request).await?;
        Ok(response.into_inner().bucket.expect("bucket in response"))
    }

    /// `ConfigurationService/CreateConfiguration`.
    pub async fn create_configuration(
        &self,
        configuration: pb::Configuration,
    ) -> Result<pb::Configuration, Status> {
        let request = pb::CreateConfigurationRequest {
            configuration: Some(configuration),
        };
        let response = self
            .configurations
            .clone()
            .create_configuration(request)
            .await?;
        Ok(response
            .into_inner()
            .configuration
            .expect("configuration in response"))
    }

    /// `JobService/CreateJob`.
    pub async fn create_job(&self, job: pb::Job) -> Result<pb::Job, Status> {
        let request = pb::CreateJobRequest { job: Some(job) };
        let response = self.jobs.clone().create_job(request).await?;
        Ok(response.into_inner().job.expect("job in response"))
    }

    /// `RetentionService/CreateRetentionPolicy`.
    pub async fn create_retention_policy(
        &self,
        policy: pb::RetentionPolicy,
    ) -> Result<pb::RetentionPolicy, Status> {
        let request = pb::CreateRetentionPolicyRequest {
            retention_policy: Some(policy),
        };
        let response = self
            .retention
            .clone()
            .create_retention_policy(request)
            .await?;
        Ok(response
            .into_inner()
            .retention_policy
            .expect("policy in response"))
    }

    /// `TagService/CreateTag`.
    pub async fn create_tag(&self, tag: pb::Tag) -> Result<pb::Tag, Status> {
        let request = pb::CreateTagRequest { tag: Some(tag) };
        let response = self.tags.clone().create_tag(request).await?;
        Ok(response.into_inner().tag.expect("tag in response"))
    }

    /// `RunService/CreateRun` without an idempotency key.
    pub async fn create_run(&self, spec: pb::create_run_request::Spec) -> Result<pb::Run, Status> {
        let request = pb::CreateRunRequest {
            spec: Some(spec),
            request_id: String::new(),
        };
        let response = self.runs.clone().create_run(request).await?;
        Ok(response.into_inner().run.expect("run in response"))
    }

    /// Queues a run of `spec`; returns its id.
    pub async fn queue_run(&self, spec: pb::create_run_request::Spec) -> String {
        self.create_run(spec).await.expect("create run").id
    }

    /// Queues a backup of job `job_id`; returns the run.
    pub async fn start_backup(&self, job_id: &str) -> pb::Run {
        self.create_run(pb::create_run_request::Spec::Backup(pb::BackupSpec {
            job_id: job_id.to_string(),
            ..Default::default()
        }))
        .await
        .expect("queue a backup of the job")
    }

    /// `RunService/GetRun`.
    pub async fn get_run(&self, id: &str) -> Result<pb::Run, Status> {
        let request = pb::GetRunRequest { id: id.to_string() };
        let response = self.runs.clone().get_run(request).await?;
        Ok(response.into_inner().run.expect("run in response"))
    }

    /// `RunService/CancelRun`.
    pub async fn cancel_run(&self, id: &str) -> Result<pb::Run, Status> {
        let request = pb::CancelRunRequest { id: id.to_string() };
        let response = self.runs.clone().cancel_run(request).await?;
        Ok(response.into_inner().run.expect("run in response"))
    }

    /// `TagService/GetTag` of the tag `id`.
    pub async fn tag_by_id(&self, id: &str) -> Result<pb::Tag, Status> {
        self.get_tag(pb::GetTagRequest { id: id.to_string() }).await
    }

    /// `RetentionService/GetRetentionPolicy` of the policy `id`.
    pub async fn retention_policy_by_id(&self, id: &str) -> Result<pb::RetentionPolicy, Status> {
        let request = pb::GetRetentionPolicyRequest { id: id.to_string() };
        self.get_retention_policy(request).await
    }

    /// Follows `WatchRun` until `done` holds for the run, for at most
    /// `limit`; returns the run as it was then. `WatchRun` ends once the run
    /// is final; then the run is read once more, and the test fails unless
    /// `done` holds for it.
    pub async fn wait_for_run(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&pb::Run) -> bool,
    ) -> pb::Run {
        let request = pb::WatchRunRequest { id: id.to_string() };
        let mut stream = self
            .runs
            .clone()
            .watch_run(request)
            .await
            .expect("watch run")
            .into_inner();
        let watching = async {
            while let Ok(Some(update)) = stream.message().await {
                let run = update.run.expect("run in update");
                if done(&run) {
                    return run;
                }
            }
            let run = self.get_run(id).await.expect("get run");
            assert!(
                done(&run),
                "run {id} ended without the awaited change: {run:?}"
            );
            run
        };
        tokio::time::timeout(limit, watching)
            .await
            .unwrap_or_else(|_| panic!("run {id} did not reach the awaited state within {limit:?}"))
    }

    /// The backup metadata records of run `run_id` (`ListBackupMetadata`).
    pub async fn run_metadata(&self, run_id: &str) -> Vec<pb::BackupMetadata> {
        let request = pb::ListBackupMetadataRequest {
            run_id: run_id.to_string(),
            ..Default::default()
        };
        let response = self.metadata.clone().list_backup_metadata(request).await;
        response
            .expect("list metadata")
            .into_inner()
            .backup_metadata
    }
}

/// Implements, for each `method: client, Request => answer field: Resource`,
/// an [`Api`] method that makes the call and answers with the one resource of
/// the response, so a test reads `api.get_job(request).await?` rather than
/// unwrapping the response.
macro_rules! answering_one_resource {
    ($($method:ident: $client:ident, $request:ident => $answer:ident: $resource:ident;)*) => {
        impl Api {
            $(
                #[doc = concat!("`", stringify!($request), "`, answering with the ", stringify!($answer), ".")]
                pub async fn $method(&self, request: pb::$request) -> Result<pb::$resource, Status> {
                    let response = self.$client.clone().$method(request).await?;
                    let answer = response.into_inner().$answer;
                    Ok(answer.expect(concat!(stringify!($answer), " in the response")))
                }
            )*
        }
    };
}

answering_one_resource! {
    get_bucket: buckets, GetBucketRequest => bucket: Bucket;
    update_bucket: buckets, UpdateBucketRequest => bucket: Bucket;
    get_configuration: configurations, GetConfigurationRequest => configuration: Configuration;
    update_configuration: configurations, UpdateConfigurationRequest => configuration: Configuration;
    get_grant: grants, GetGrantRequest => grant: Grant;
    get_job: jobs, GetJobRequest => job: Job;
    update_job: jobs, UpdateJobRequest => job: Job;
    get_backup_metadata: metadata, GetBackupMetadataRequest => backup_metadata: BackupMetadata;
    update_backup_metadata: metadata, UpdateBackupMetadataRequest => backup_metadata: BackupMetadata;
    get_retention_policy: retention, GetRetentionPolicyRequest => retention_policy: RetentionPolicy;
    update_retention_policy: retention, UpdateRetentionPolicyRequest => retention_policy: RetentionPolicy;
    get_object_retention: retention, GetObjectRetentionRequest => object_retention: ObjectRetention;
    update_object_retention: retention, UpdateObjectRetentionRequest => object_retention: ObjectRetention;
    get_tag: tags, GetTagRequest => tag: Tag;
    update_tag: tags, UpdateTagRequest => tag: Tag;
    get_user: users, GetUserRequest => user: User;
    update_user: users, UpdateUserRequest => user: User;
}

/// Implements, for each `method: client, Request`, an [`Api`] method that
/// deletes the resource with the given id.
macro_rules! deleting_by_id {
    ($($method:ident: $client:ident, $request:ident;)*) => {
        impl Api {
            $(
                #[doc = concat!("`", stringify!($request), "` of the resource `id`.")]
                pub async fn $method(&self, id: &str) -> Result<(), Status> {
                    let request = pb::$request { id: id.to_string() };
                    self.$client.clone().$method(request).await.map(|_| ())
                }
            )*
        }
    };
}

deleting_by_id! {
    delete_bucket: buckets, DeleteBucketRequest;
    delete_configuration: configurations, DeleteConfigurationRequest;
    delete_grant: grants, DeleteGrantRequest;
    delete_job: jobs, DeleteJobRequest;
    delete_backup_metadata: metadata, DeleteBackupMetadataRequest;
    delete_retention_policy: retention, DeleteRetentionPolicyRequest;
    delete_object_retention: retention, DeleteObjectRetentionRequest;
    delete_tag: tags, DeleteTagRequest;
}

/// Implements, for each `method: client, list call, Request => items: Resource`,
/// an [`Api`] method that reads every page of the list from the first one and
/// checks that no page holds more than the request's `page_size`.
macro_rules! listing_every_page {
    ($($method:ident: $client:ident, $list:ident, $request:ident => $items:ident: $resource:ident;)*) => {
        impl Api {
            $(
                #[doc = concat!("Every page of `", stringify!($request), "`, in order.")]
                pub async fn $method(&self, mut request: pb::$request) -> Vec<pb::$resource> {
                    let page_size = usize::try_from(request.page_size).unwrap_or(0);
                    let mut client = self.$client.clone();
                    let mut items = Vec::new();
                    loop {
                        let page = client.$list(request.clone()).await;
                        let page = page.expect(stringify!($list)).into_inner();
                        let full = page_size == 0 || page.$items.len() <= page_size;
                        assert!(full, "a page larger than page_size {page_size}");
                        items.extend(page.$items);
                        if page.next_page_token.is_empty() {
                            return items;
                        }
                        request.page_token = page.next_page_token;
                    }
                }
            )*
        }
    };
}

listing_every_page! {
    all_buckets: buckets, list_buckets, ListBucketsRequest => buckets: Bucket;
    all_configurations: configurations, list_configurations, ListConfigurationsRequest => configurations: Configuration;
    all_grants: grants, list_grants, ListGrantsRequest => grants: Grant;
    all_jobs: jobs, list_jobs, ListJobsRequest => jobs: Job;
    all_retention_policies: retention, list_retention_policies, ListRetentionPoliciesRequest => retention_policies: RetentionPolicy;
}
