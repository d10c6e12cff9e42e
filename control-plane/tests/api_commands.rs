//! CommandService and the command fields of jobs and ad-hoc backups, over
//! real gRPC on both catalog backends: only admins define commands and see
//! their definitions; a tenant names only a command granted to them; and
//! what a run will execute is resolved from the definition at the lease.

use crate::support;
use crate::support::lease_session;

use coffer_control_plane::testing::Api;
use coffer_proto::v1 as pb;
use pb::create_run_request::Spec;
use support::{assert_code, assert_violations, Backend, TestServer};
use tonic::Code;

fn dump_command(grantee_ids: Vec<String>) -> pb::Command {
    pb::Command {
        name: "pg-dump".into(),
        description: "the orders database".into(),
        executable: "/usr/bin/pg_dump".into(),
        args: vec!["--format=plain".into(), "orders".into()],
        environment: [("PGPASSWORD".to_string(), "s3cret-in-env".to_string())].into(),
        timeout: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        output_file_name: "orders.sql".into(),
        grantee_ids,
        ..Default::default()
    }
}

async fn create_command(api: &Api, command: pb::Command) -> Result<pb::Command, tonic::Status> {
    Ok(api
        .commands
        .clone()
        .create_command(pb::CreateCommandRequest {
            command: Some(command),
        })
        .await?
        .into_inner()
        .command
        .expect("command in response"))
}

fn repository_target(path: &str) -> Option<pb::Target> {
    Some(pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(path.into())),
    })
}

/// A job backing up only the output of `command_id`.
fn dump_job(command_id: &str) -> pb::Job {
    pb::Job {
        name: "orders".into(),
        target: repository_target("/backups/orders"),
        command_sources: vec![pb::CommandSource {
            command_id: command_id.into(),
            file_name: String::new(),
        }],
        ..Default::default()
    }
}

async fn only_admins_define_commands_and_see_their_definitions(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin();
    let (alice, alice_token) = server.create_user("alice").await;
    let (_, bob_token) = server.create_user("bob").await;
    let alice_api = server.as_user(&alice_token);
    let bob_api = server.as_user(&bob_token);

    assert_code(
        create_command(&alice_api, dump_command(vec![alice.id.clone()])).await,
        Code::PermissionDenied,
        "a tenant defining a command",
    );
    let created = create_command(&admin, dump_command(vec![alice.id.clone()]))
        .await
        .expect("admin defines a command");
    assert_eq!(created.args, ["--format=plain", "orders"]);
    assert_eq!(created.working_directory, "/");

    // The grantee sees what it needs to name the command, and nothing of
    // its definition (the environment holds a password).
    let seen = alice_api
        .commands
        .clone()
        .get_command(pb::GetCommandRequest {
            id: created.id.clone(),
        })
        .await
        .expect("the grantee sees the command")
        .into_inner()
        .command
        .expect("command");
    assert_eq!(seen.name, "pg-dump");
    assert_eq!(seen.output_file_name, "orders.sql");
    assert!(seen.executable.is_empty() && seen.args.is_empty());
    assert!(seen.environment.is_empty() && seen.grantee_ids.is_empty());
    let listed = alice_api
        .commands
        .clone()
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.commands.len(), 1);
    assert!(!format!("{listed:?}").contains("s3cret-in-env"));

    // Anyone else sees nothing at all.
    assert_code(
        bob_api
            .commands
            .clone()
            .get_command(pb::GetCommandRequest {
                id: created.id.clone(),
            })
            .await,
        Code::NotFound,
        "a stranger reading a command",
    );
    let none = bob_api
        .commands
        .clone()
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(none.commands.is_empty());
    assert_code(
        alice_api
            .commands
            .clone()
            .delete_command(pb::DeleteCommandRequest {
                id: created.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "a grantee deleting a command",
    );
}

async fn bad_definitions_name_every_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let bad = pb::Command {
        name: "Not A Name".into(),
        executable: "pg_dump".into(),
        working_directory: "/tmp/../etc".into(),
        environment: [
            ("PATH".to_string(), "/tmp".to_string()),
            ("COFFER_RUN_ID".to_string(), "x".to_string()),
        ]
        .into(),
        output_file_name: "../../etc/passwd".into(),
        grantee_ids: vec!["not-a-uuid".into()],
        timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        }),
        ..Default::default()
    };
    let status = create_command(&server.admin(), bad)
        .await
        .expect_err("invalid");
    assert_violations(
        &status,
        &[
            "command.name",
            "command.executable",
            "command.working_directory",
            "command.environment[\"PATH\"]",
            "command.environment[\"COFFER_RUN_ID\"]",
            "command.output_file_name",
            "command.grantee_ids[0]",
            "command.timeout",
        ],
    );
    let duplicate = create_command(&server.admin(), dump_command(Vec::new())).await;
    duplicate.expect("first");
    assert_code(
        create_command(&server.admin(), dump_command(Vec::new())).await,
        Code::AlreadyExists,
        "a second command of the same name",
    );
}

async fn a_tenant_names_only_commands_granted_to_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin();
    let (alice, alice_token) = server.create_user("alice").await;
    let (_, bob_token) = server.create_user("bob").await;
    let command = create_command(&admin, dump_command(vec![alice.id.clone()]))
        .await
        .expect("command");
    let bob = server.as_user(&bob_token);

    let refused = bob.create_job(dump_job(&command.id)).await;
    let status = refused.expect_err("not granted to bob");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("job.command_sources[0].command_id"),
        "{status:?}"
    );
    // A command that does not exist gets the same answer.
    let unknown = pb::Job {
        pre_hook_command_ids: vec![uuid::Uuid::now_v7().to_string()],
        source_path: "/srv".into(),
        ..dump_job(&command.id)
    };
    let status = server
        .as_user(&alice_token)
        .create_job(unknown)
        .await
        .expect_err("unknown hook");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().starts_with("job.pre_hook_command_ids[0]"));

    let ad_hoc = Spec::Backup(pb::BackupSpec {
        target: repository_target("/backups/bob"),
        command_sources: vec![pb::CommandSource {
            command_id: command.id.clone(),
            file_name: "db.sql".into(),
        }],
        ..Default::default()
    });
    assert_code(
        bob.create_run(ad_hoc).await,
        Code::PermissionDenied,
        "bob's ad-hoc backup of alice's command",
    );
    assert!(bob
        .all_jobs(pb::ListJobsRequest::default())
        .await
        .is_empty());

    // The grantee may: a job of command output alone, no source tree.
    let alice_api = server.as_user(&alice_token);
    let job = alice_api
        .create_job(dump_job(&command.id))
        .await
        .expect("alice's job");
    assert_eq!(job.source_path, "");
    assert_eq!(job.command_sources[0].command_id, command.id);
    let run = alice_api.start_backup(&job.id).await;
    let Some(pb::run::Spec::Backup(spec)) = run.spec else {
        panic!("a backup run: {run:?}");
    };
    assert_eq!(spec.command_sources.len(), 1);
}

async fn command_fields_are_validated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let job = pb::Job {
        name: "bad".into(),
        target: repository_target("/backups/bad"),
        command_sources: vec![pb::CommandSource {
            command_id: "nope".into(),
            file_name: "a/b".into(),
        }],
        post_hook_command_ids: vec![String::new()],
        ..Default::default()
    };
    let status = api.create_job(job).await.expect_err("invalid");
    assert_violations(
        &status,
        &[
            "job.command_sources[0].command_id",
            "job.post_hook_command_ids[0]",
        ],
    );
    let no_source = pb::Job {
        name: "empty".into(),
        target: repository_target("/backups/empty"),
        ..Default::default()
    };
    let status = api
        .create_job(no_source)
        .await
        .expect_err("nothing to back up");
    assert_violations(&status, &["job.source_path"]);
}

async fn a_withdrawn_command_fails_the_run_at_the_lease(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin();
    let (alice, alice_token) = server.create_user("alice").await;
    let command = create_command(&admin, dump_command(vec![alice.id.clone()]))
        .await
        .expect("command");
    let alice_api = server.as_user(&alice_token);
    let job = alice_api
        .create_job(dump_job(&command.id))
        .await
        .expect("job");
    let run = alice_api.start_backup(&job.id).await;
    admin
        .commands
        .clone()
        .delete_command(pb::DeleteCommandRequest {
            id: command.id.clone(),
        })
        .await
        .expect("delete");
    // A worker leasing the run is refused its assignment: the run fails
    // without anything being run.
    let token = server.worker_token_for("w1").await;
    let worker = lease_session::open(&server, &token, "w1")
        .await
        .expect("session");
    worker.credit(1).await;
    let failed = server
        .wait_until_final(&run.id, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(failed.state, pb::RunState::Failed as i32, "{failed:?}");
    assert!(failed.error.contains("not granted"), "{failed:?}");
}

both_backends!(
    only_admins_define_commands_and_see_their_definitions,
    bad_definitions_name_every_field,
    a_tenant_names_only_commands_granted_to_them,
    command_fields_are_validated,
    a_withdrawn_command_fails_the_run_at_the_lease,
);
