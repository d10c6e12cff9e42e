//! Tenants for the grant attacks: users with tokens and exactly the grants a
//! test gives them, and runs made as those users.

use std::path::Path;
use std::time::Duration;

use coffer_control_plane::testing::{Api, TestServer};
use coffer_proto::v1 as pb;
use pb::create_run_request::Spec;

/// A user of the test with their own API client.
pub struct Tenant {
    /// The user.
    pub user: pb::User,
    /// Calls made as the user.
    pub api: Api,
}

impl Tenant {
    /// Creates a user without grants.
    pub async fn new(server: &TestServer, name: &str) -> Tenant {
        let (user, token) = server.admin().create_user_without_grants(name).await;
        Tenant {
            user,
            api: server.as_user(&token),
        }
    }

    /// Has the admin grant `root` to this user for `uses`, on workers with
    /// `selector`; returns the grant's id.
    pub async fn granted(
        &self,
        server: &TestServer,
        root: &Path,
        uses: &[pb::GrantUse],
        selector: &[(&str, &str)],
    ) -> String {
        let grant = pb::Grant {
            grantee_id: self.user.id.clone(),
            root: root.display().to_string(),
            uses: uses.iter().map(|u| *u as i32).collect(),
            worker_selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        server
            .admin()
            .create_grant(grant)
            .await
            .expect("admin creates grant")
            .id
    }

    /// Creates a run as this user.
    pub async fn create_run(&self, spec: Spec) -> Result<pb::Run, tonic::Status> {
        self.api.create_run(spec).await
    }

    /// Creates a run as this user and waits until it is final.
    pub async fn run_to_end(&self, server: &TestServer, spec: Spec) -> pb::Run {
        let run = self.create_run(spec).await.expect("create run");
        server
            .wait_until_final(&run.id, Duration::from_secs(120))
            .await
    }
}

/// An ad-hoc backup of `source` into the filesystem repository `repository`.
pub fn backup(source: &Path, repository: &Path) -> Spec {
    Spec::Backup(pb::BackupSpec {
        source_path: source.display().to_string(),
        target: Some(filesystem(repository)),
        ..Default::default()
    })
}

/// A restore of snapshot `run_id` into `destination` (in place when `None`).
pub fn restore(run_id: &str, destination: Option<&Path>) -> Spec {
    Spec::Restore(pb::RestoreSpec {
        snapshot_run_id: run_id.to_string(),
        destination_path: destination
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        ..Default::default()
    })
}

/// A filesystem target spelled exactly as given.
pub fn filesystem_spelled(path: &str) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(path.to_string())),
    }
}

/// A filesystem target.
pub fn filesystem(path: &Path) -> pb::Target {
    filesystem_spelled(&path.display().to_string())
}

/// The names of the entries directly in `dir` (empty if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
