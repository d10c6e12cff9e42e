//! Shared by the worker's process-level tests: real `coffer-worker` child
//! processes, run helpers over the public API, and S3 buckets on Garage.

/// One `#[tokio::test]` per catalog backend for each named scenario.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::Backend::Postgres).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::Backend::Sqlite).await;
                }
            }
        )*
    };
}

pub mod credentials;
pub mod worker_api;

pub mod fencing;
pub mod grants;
pub mod tls;
pub mod worker_io;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coffer_control_plane::testing::TestServer;
use coffer_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use worker_api::Store;

/// A `coffer-worker` child process, killed when dropped.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub fn spawn(server: &TestServer, name: &str) -> WorkerProcess {
        Self::spawn_with(server, name, 2, &[], None)
    }

    /// Spawns a worker with `slots` slots and extra environment; its log goes
    /// to `log` when given (to be searched by the test), else to stderr.
    pub fn spawn_with(
        server: &TestServer,
        name: &str,
        slots: usize,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> WorkerProcess {
        let args = ["--slots".to_string(), slots.to_string()];
        Self::spawn_at(
            &format!("http://{}", server.addr),
            &worker_token(server, name),
            name,
            &args,
            env,
            log,
        )
    }

    /// Spawns a worker against the control plane at `url` with `token`,
    /// extra arguments and environment; its log goes to `log` when given.
    pub fn spawn_at(
        url: &str,
        token: &str,
        name: &str,
        args: &[String],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> WorkerProcess {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create worker log")),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_coffer-worker"))
            .args(["--control-plane", url, "--name", name])
            .args(args)
            .env("COFFER_WORKER_TOKEN", token)
            .env("COFFER_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn coffer-worker");
        WorkerProcess { child }
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`, `KILL`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn kill_hard(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }
}

/// The worker's own token (a worker token belongs to one worker).
fn worker_token(server: &TestServer, name: &str) -> String {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(server.worker_token_for(name))
    })
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A target in bucket `bucket_id` (a registered bucket's id) under `prefix`.
pub fn bucket_target(bucket_id: &str, prefix: &str) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id: bucket_id.to_owned(),
            prefix: prefix.to_owned(),
        })),
    }
}

/// A target at filesystem path `path`.
pub fn filesystem_target(path: &Path) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(
            path.display().to_string(),
        )),
    }
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, bytes).expect("write source file");
}

/// Pseudo-random, incompressible bytes without a dependency.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub async fn create_run(
    server: &TestServer,
    source: &Path,
    target: pb::target::Destination,
) -> String {
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: source.display().to_string(),
        target: Some(pb::Target {
            destination: Some(target),
        }),
        ..Default::default()
    });
    start_run(server, spec).await
}

/// Creates a run from `spec` as the admin; returns its id.
pub async fn start_run(server: &TestServer, spec: pb::create_run_request::Spec) -> String {
    server.admin().queue_run(spec).await
}

/// Creates a run from `spec` as the admin and waits (up to 5 minutes) until
/// it has succeeded.
pub async fn run_to_success(server: &TestServer, spec: pb::create_run_request::Spec) -> pb::Run {
    let id = start_run(server, spec).await;
    let run = wait_until_final(server, &id, Duration::from_secs(300)).await;
    assert_succeeded(&run);
    run
}

/// The retention plan of job `job_id`, as the admin asks for it.
pub async fn plan_retention(server: &TestServer, job_id: &str) -> pb::PlanRetentionResponse {
    let request = pb::PlanRetentionRequest {
        job_id: job_id.to_string(),
        ..Default::default()
    };
    let mut retention = server.admin().retention;
    retention
        .plan_retention(request)
        .await
        .expect("plan")
        .into_inner()
}

/// Collects the garbage of `target` with no grace period and waits until
/// the collection has succeeded.
pub async fn collect_garbage(server: &TestServer, target: &pb::Target) -> pb::Run {
    let spec = pb::create_run_request::Spec::GarbageCollection(pb::GarbageCollectionSpec {
        target: Some(target.clone()),
        grace_period: Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        }),
        repack_threshold_percent: 0.0,
    });
    run_to_success(server, spec).await
}

/// Fails the test with the run's error unless it has succeeded.
pub fn assert_succeeded(run: &pb::Run) {
    assert_eq!(
        run.state,
        pb::RunState::Succeeded as i32,
        "run {} failed: {}",
        run.id,
        run.error
    );
}

/// Backs up job `job_id` and waits until the backup has succeeded.
pub async fn backup_job(server: &TestServer, job_id: &str) -> pb::Run {
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        job_id: job_id.into(),
        ..Default::default()
    });
    run_to_success(server, spec).await
}

/// Creates `job` as the admin; returns its id.
pub async fn create_job(server: &TestServer, job: pb::Job) -> String {
    server.admin().create_job(job).await.expect("create job").id
}

/// Creates a keep-last-`keep_last` retention policy as the admin; returns its id.
pub async fn keep_last_policy(server: &TestServer, keep_last: i32) -> String {
    let policy = pb::RetentionPolicy {
        name: format!("keep-last-{keep_last}"),
        keep_last,
        ..Default::default()
    };
    let created = server.admin().create_retention_policy(policy).await;
    created.expect("create policy").id
}

/// Creates a job backing `source` up to `target` under retention policy
/// `policy` (none when empty); returns its id.
pub async fn create_job_into(
    server: &TestServer,
    source: &Path,
    target: pb::Target,
    policy: &str,
) -> String {
    let job = pb::Job {
        name: "rotating".into(),
        source_path: source.display().to_string(),
        target: Some(target),
        retention_policy_id: policy.into(),
        ..Default::default()
    };
    create_job(server, job).await
}

/// Verifies snapshot `run_id`, reading all of its data; waits until the
/// run is final.
pub async fn verify_fully(server: &TestServer, run_id: &str) -> pb::Run {
    let spec = pb::create_run_request::Spec::Verify(pb::VerifySpec {
        snapshot_run_id: run_id.into(),
        read_data_percent: 100.0,
    });
    let id = start_run(server, spec).await;
    wait_until_final(server, &id, Duration::from_secs(120)).await
}

/// Opens the repository at filesystem path `repo` as a lease would.
pub async fn open_filesystem_repository(
    server: &TestServer,
    repo: &Path,
) -> worker_api::Repository {
    let access = repository_access(server, &format!("filesystem:{}", repo.display())).await;
    let target = pb::ResolvedTarget {
        filesystem_path: repo.display().to_string(),
        ..Default::default()
    };
    let store = Arc::new(Store::open(&target, "").await.expect("open store"));
    worker_api::Repository::open(store, &access, &CancellationToken::new())
        .await
        .expect("open the repository as a lease would")
}

/// Follows WatchRun until the run is final.
pub async fn wait_until_final(server: &TestServer, id: &str, limit: Duration) -> pb::Run {
    server.wait_until_final(id, limit).await
}

pub async fn snapshot_files(server: &TestServer, run_id: &str) -> Vec<pb::SnapshotFile> {
    let mut objects = server.admin().objects;
    let mut files = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListSnapshotFilesRequest {
            run_id: run_id.into(),
            page_size: 1000,
            page_token: page_token.clone(),
            path_prefix: String::new(),
        };
        let page = objects
            .list_snapshot_files(request)
            .await
            .expect("snapshot files")
            .into_inner();
        files.extend(page.files);
        if page.next_page_token.is_empty() {
            return files;
        }
        page_token = page.next_page_token;
    }
}

/// Queues a restore of snapshot `run_id` into `destination` and waits for it.
pub async fn restore(server: &TestServer, run_id: &str, destination: &Path) -> pb::Run {
    let spec = pb::create_run_request::Spec::Restore(pb::RestoreSpec {
        snapshot_run_id: run_id.into(),
        destination_path: destination.display().to_string(),
        ..Default::default()
    });
    let restore_id = start_run(server, spec).await;
    wait_until_final(server, &restore_id, Duration::from_secs(300)).await
}

/// The records of `BackupMetadataService` for run `run_id`, as the admin.
pub async fn backup_metadata(server: &TestServer, run_id: &str) -> Vec<pb::BackupMetadata> {
    server.admin().run_metadata(run_id).await
}

/// The id of the registered worker called `name`, if there is one.
pub async fn worker_id(server: &TestServer, name: &str) -> Option<String> {
    registered_workers(server)
        .await
        .into_iter()
        .find(|w| w.name == name)
        .map(|w| w.id)
}

/// The workers registered with the control plane, offline ones too (a
/// frozen worker is offline once a TTL passed without a word from it).
pub async fn registered_workers(server: &TestServer) -> Vec<pb::Worker> {
    server.registered_workers().await
}

/// Restores snapshot `run_id` through a restore run and checks that every
/// regular file of the snapshot came back equal to the source. Returns the
/// number of files compared.
pub async fn assert_restorable(server: &TestServer, run_id: &str, source: &Path) -> usize {
    let destination = tempfile::tempdir().expect("restore dir");
    assert_succeeded(&restore(server, run_id, destination.path()).await);
    let mut checked = 0;
    for file in snapshot_files(server, run_id).await {
        let version = file.version.expect("version");
        if version.kind != pb::FileKind::Regular as i32 {
            continue;
        }
        let original = std::fs::read(source.join(&file.path)).expect("read source");
        let restored = std::fs::read(destination.path().join(&file.path))
            .unwrap_or_else(|e| panic!("{} was not restored: {e}", file.path));
        assert!(
            restored == original,
            "{} differs from its backup",
            file.path
        );
        checked += 1;
    }
    checked
}

/// Total bytes of the packs in `store`.
pub async fn pack_bytes(store: &Store) -> u64 {
    store
        .list_with_sizes("packs/", &CancellationToken::new())
        .await
        .expect("list packs")
        .iter()
        .map(|(_, size)| size)
        .sum()
}

/// An S3 server the tests can reach, and how its credentials are referenced.
pub struct S3Server {
    pub endpoint: String,
    pub region: String,
    /// A bucket `credentials_ref` (`env:NAME` or `file:/dir`).
    pub credentials_ref: String,
}

impl S3Server {
    /// The Garage started by the test command (`scripts/start-garage.sh`).
    pub fn shared() -> S3Server {
        let endpoint = std::env::var("COFFER_TEST_S3_ENDPOINT").expect(
            "COFFER_TEST_S3_ENDPOINT: start Garage with `eval \"$(scripts/start-garage.sh)\"` (scripts/test.sh does)",
        );
        S3Server {
            endpoint,
            region: std::env::var("COFFER_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
            credentials_ref: "env:COFFER_TEST_S3".into(),
        }
    }
}

/// A Garage server of this test's own (so that it can be stopped without
/// disturbing other tests), started by `scripts/start-garage.sh`; its
/// credentials are files in a directory, referenced as `file:<dir>`.
pub struct OwnGarage {
    pub server: S3Server,
    pid: u32,
    /// The server started by `restart`, reaped on kill.
    restarted: Option<Child>,
    config: PathBuf,
    dir: PathBuf,
    _credentials: tempfile::TempDir,
}

impl OwnGarage {
    pub fn start() -> OwnGarage {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/start-garage.sh");
        let run = || {
            Command::new("bash")
                .arg(&script)
                .output()
                .expect("run start-garage.sh")
        };
        // The script picks free ports that another test may take before
        // Garage binds them: a failed start is tried again.
        let mut output = run();
        for _ in 0..2 {
            if output.status.success() {
                break;
            }
            output = run();
        }
        assert!(
            output.status.success(),
            "start-garage.sh failed three times; last: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let exports = String::from_utf8(output.stdout).expect("utf-8 exports");
        let value = |name: &str| {
            exports
                .lines()
                .find_map(|line| line.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('\'').to_owned())
                .unwrap_or_else(|| panic!("start-garage.sh did not export {name}"))
        };
        let credentials = tempfile::tempdir().expect("credentials dir");
        std::fs::write(
            credentials.path().join("access_key_id"),
            value("COFFER_TEST_S3_ACCESS_KEY_ID"),
        )
        .expect("write key id");
        std::fs::write(
            credentials.path().join("secret_access_key"),
            value("COFFER_TEST_S3_SECRET_ACCESS_KEY"),
        )
        .expect("write secret");
        let config = PathBuf::from(value("GARAGE_CONFIG"));
        OwnGarage {
            server: S3Server {
                endpoint: value("COFFER_TEST_S3_ENDPOINT"),
                region: value("COFFER_TEST_S3_REGION"),
                credentials_ref: format!("file:{}", credentials.path().display()),
            },
            pid: value("GARAGE_PID").parse().expect("numeric pid"),
            dir: config.parent().expect("config dir").to_path_buf(),
            config,
            restarted: None,
            _credentials: credentials,
        }
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits until
    /// it is gone.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        if let Some(mut child) = self.restarted.take() {
            let _ = child.wait();
            return;
        }
        while Path::new(&format!("/proc/{}", self.pid)).exists() {
            // A zombie until reaped by init; its state says so.
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
            if stat.contains(") Z ") || stat.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data, ports and keys, and waits
    /// until its S3 endpoint answers.
    pub async fn restart(&mut self) {
        let garage = std::env::var("HOME")
            .map(|home| PathBuf::from(home).join(".cargo/bin/garage"))
            .ok()
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("garage"));
        let log = std::fs::File::create(self.dir.join("garage-restarted.log")).expect("log");
        let child = Command::new(garage)
            .args(["-c"])
            .arg(&self.config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restart garage");
        self.pid = child.id();
        self.restarted = Some(child);
        let address = self
            .server
            .endpoint
            .trim_start_matches("http://")
            .to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "garage did not come back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OwnGarage {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Registers the existing bucket `name` on `s3` with the control plane.
pub async fn register_bucket(server: &TestServer, s3: &S3Server, name: &str) -> String {
    register_bucket_with(server, s3, name, pb::RepositoryEncryption::Unspecified).await
}

/// Registers the existing bucket `name` on `s3` with the control plane,
/// its repositories protected by `encryption`.
pub async fn register_bucket_with(
    server: &TestServer,
    s3: &S3Server,
    name: &str,
    encryption: pb::RepositoryEncryption,
) -> String {
    let bucket = pb::Bucket {
        encryption: encryption as i32,
        ..s3_bucket(s3, name)
    };
    let created = server.admin().create_bucket(bucket).await;
    created.expect("register bucket").id
}

/// The admin's registration of the existing bucket `name` on `s3`, with the
/// worker's credentials, to adjust and create.
pub fn s3_bucket(s3: &S3Server, name: &str) -> pb::Bucket {
    pb::Bucket {
        name: name.to_owned(),
        location: Some(pb::bucket::Location::S3(pb::S3Location {
            endpoint: s3.endpoint.clone(),
            bucket: name.to_owned(),
            region: s3.region.clone(),
            force_path_style: true,
            credentials_ref: s3.credentials_ref.clone(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A new bucket on the shared Garage, registered with the control plane.
pub async fn garage_bucket(server: &TestServer) -> (String, Arc<Store>) {
    bucket_on(server, &S3Server::shared()).await
}

/// A new bucket on `s3`, created there and registered with the control
/// plane; returns its id and a store on its `repo` prefix.
pub async fn bucket_on(server: &TestServer, s3: &S3Server) -> (String, Arc<Store>) {
    let (name, store) = new_bucket_on(s3).await;
    let bucket_id = register_bucket(server, s3, &name).await;
    (bucket_id, store)
}

/// A new bucket on `s3`, created there with the test's own credentials but
/// not registered; returns its name and a store on its `repo` prefix.
pub async fn new_bucket_on(s3: &S3Server) -> (String, Arc<Store>) {
    let name = format!(
        "coffer-e2e-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let resolved = pb::ResolvedTarget {
        bucket: Some(pb::ResolvedBucket {
            endpoint: s3.endpoint.clone(),
            bucket: name.clone(),
            region: s3.region.clone(),
            force_path_style: true,
            credentials_ref: s3.credentials_ref.clone(),
            use_worker_credentials: true,
            prefix: "repo".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let store = Store::open(&resolved, "").await.expect("open garage");
    let Store::S3(s3_store) = &store else {
        panic!("S3 store expected")
    };
    s3_store
        .ensure_bucket(&CancellationToken::new())
        .await
        .expect("create bucket");

    (name, Arc::new(store))
}

/// How a lease would let a worker open the repository at `location` (the
/// catalog's spelling, e.g. `filesystem:/path` or `bucket:<id>/<prefix>`):
/// its identity, format, catalog key (opened as the control plane does)
/// and pinned generation. For tests that read or tamper with a repository
/// directly.
pub async fn repository_access(
    server: &TestServer,
    location: &str,
) -> worker_api::RepositoryAccess {
    use coffer_control_plane::model::bucket::RepositoryEncryption;
    use worker_api::{NewFormat, PinnedGeneration, RepositoryAccess};
    let row = server
        .catalog()
        .find_repository(location)
        .await
        .expect("read the repository")
        .expect("the repository exists");
    let catalog_key =
        coffer_control_plane::runs::repositories::open_catalog_key(server.secrets(), &row)
            .expect("open the catalog key")
            .map(|key| {
                let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
                bytes.copy_from_slice(&key);
                bytes
            });
    let format = match row.encryption().expect("encryption") {
        None => NewFormat::V1 {
            chunk_key: row.chunk_key.clone(),
        },
        Some(RepositoryEncryption::Aes256Gcm) => NewFormat::V2 {
            encryption: coffer_format::Encryption::Aes256Gcm,
        },
        Some(RepositoryEncryption::None) => NewFormat::V2 {
            encryption: coffer_format::Encryption::None,
        },
    };
    RepositoryAccess {
        repository_id: row.storage_identity(),
        format,
        catalog_key,
        pinned: row
            .pinned_generation()
            .map(|(generation, fingerprint)| PinnedGeneration {
                generation,
                fingerprint: fingerprint.to_owned(),
            }),
        v1_fallback: true,
        adopt: false,
        passphrase: None,
    }
}

/// Creates a passphrase secret holding `passphrase` through `api`; returns
/// its id.
pub async fn passphrase_secret(
    api: &coffer_control_plane::testing::Api,
    passphrase: &str,
) -> String {
    api.secrets
        .clone()
        .create_secret(pb::CreateSecretRequest {
            secret: Some(pb::Secret {
                name: format!("passphrase-{}", uuid::Uuid::new_v4().simple()),
                ..Default::default()
            }),
            passphrase: Some(pb::PassphraseValue {
                passphrase: passphrase.into(),
            }),
            ..Default::default()
        })
        .await
        .expect("passphrase secret")
        .into_inner()
        .secret
        .expect("secret")
        .id
}
