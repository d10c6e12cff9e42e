//! Admin-defined commands end to end: a real control plane, real
//! `coffer-worker` processes spawning real scripts, real files. A command's
//! output is backed up beside a tree (and alone) and restored byte for
//! byte; a command that fails or is killed commits nothing; a worker that
//! does not allow a command refuses it; pre-hooks run first and a timed-out
//! one fails the run before anything is written; post-hooks see the
//! outcome.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;

use support::{
    assert_succeeded, backup_job, create_job, restore, snapshot_files, start_run, wait_until_final,
    write, WorkerProcess,
};

/// Lines of the deterministic output the dump script writes (about 3.4 MiB).
const DUMP_LINES: u32 = 500_000;

/// What `seq 1 DUMP_LINES` prints.
fn expected_dump() -> Vec<u8> {
    let mut text = String::new();
    for n in 1..=DUMP_LINES {
        text.push_str(&n.to_string());
        text.push('\n');
    }
    text.into_bytes()
}

/// An executable shell script at `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

async fn admin_id(server: &TestServer) -> String {
    server
        .admin()
        .users
        .get_current_user(pb::GetCurrentUserRequest {})
        .await
        .expect("current user")
        .into_inner()
        .user
        .expect("user")
        .id
}

/// Defines a command running `program` with `args`, granted to the admin.
async fn define(
    server: &TestServer,
    name: &str,
    program: &Path,
    args: &[&str],
    timeout_seconds: i64,
    output_file_name: &str,
) -> String {
    let command = pb::Command {
        name: name.into(),
        executable: program.display().to_string(),
        args: args.iter().map(|a| a.to_string()).collect(),
        timeout: Some(prost_types::Duration {
            seconds: timeout_seconds,
            nanos: 0,
        }),
        output_file_name: output_file_name.into(),
        grantee_ids: vec![admin_id(server).await],
        ..Default::default()
    };
    server
        .admin()
        .commands
        .create_command(pb::CreateCommandRequest {
            command: Some(command),
        })
        .await
        .expect("define command")
        .into_inner()
        .command
        .expect("command")
        .id
}

fn filesystem(path: &Path) -> Option<pb::Target> {
    Some(pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(
            path.display().to_string(),
        )),
    })
}

fn source(command_id: &str) -> pb::CommandSource {
    pb::CommandSource {
        command_id: command_id.into(),
        file_name: String::new(),
    }
}

/// A worker allowing `commands` (comma-separated names).
fn worker(server: &TestServer, name: &str, commands: &str) -> WorkerProcess {
    WorkerProcess::spawn_with(
        server,
        name,
        2,
        &[("COFFER_WORKER_ALLOW_COMMANDS", commands)],
        None,
    )
}

/// Everything below `dir/snapshots`, where manifests are stored.
fn manifests(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir.join("snapshots")) {
        Ok(entries) => entries.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

async fn run_job_to_end(server: &TestServer, job_id: &str) -> pb::Run {
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        job_id: job_id.into(),
        ..Default::default()
    });
    let id = start_run(server, spec).await;
    wait_until_final(server, &id, Duration::from_secs(120)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_source_is_backed_up_beside_the_tree_and_restores_byte_identical() {
    let server = TestServer::start(Backend::Postgres).await;
    let programs = tempfile::tempdir().expect("programs");
    let tree = tempfile::tempdir().expect("tree");
    let target = tempfile::tempdir().expect("target");
    write(&tree.path().join("app/config.toml"), b"answer = 42\n");
    write(&tree.path().join("zz-last.txt"), b"sorted after the dump\n");
    let dump = script(programs.path(), "dump.sh", "seq 1 \"$1\"");
    let command = define(
        &server,
        "seq-dump",
        &dump,
        &[DUMP_LINES.to_string().as_str()],
        60,
        "db.sql",
    )
    .await;
    let job = create_job(
        &server,
        pb::Job {
            name: "tree-and-dump".into(),
            source_path: tree.path().display().to_string(),
            target: filesystem(target.path()),
            command_sources: vec![source(&command)],
            ..Default::default()
        },
    )
    .await;
    let _worker = worker(&server, "commands-source", "seq-dump");

    let first = backup_job(&server, &job).await;
    // Twice: the second is an incremental matched against the first.
    let second = backup_job(&server, &job).await;
    for run in [&first, &second] {
        let files = snapshot_files(&server, &run.id).await;
        let mut paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            ["app", "app/config.toml", "db.sql", "zz-last.txt"],
            "{}",
            run.id
        );
    }
    let restored = tempfile::tempdir().expect("restore dir");
    assert_succeeded(&restore(&server, &second.id, restored.path()).await);
    let dumped = std::fs::read(restored.path().join("db.sql")).expect("restored dump");
    assert!(
        dumped == expected_dump(),
        "the dump differs from the command's output"
    );
    assert_eq!(
        std::fs::read(restored.path().join("app/config.toml")).expect("restored file"),
        b"answer = 42\n"
    );

    // The same command alone, with no tree at all, ad hoc.
    let alone = tempfile::tempdir().expect("second target");
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        target: filesystem(alone.path()),
        command_sources: vec![pb::CommandSource {
            command_id: command.clone(),
            file_name: "numbers.txt".into(),
        }],
        ..Default::default()
    });
    let run_id = start_run(&server, spec).await;
    let run = wait_until_final(&server, &run_id, Duration::from_secs(120)).await;
    assert_succeeded(&run);
    // (ListSnapshotFiles of an ad-hoc run on a filesystem target also lists
    // the owner's other objects valid then, so the restore is what counts.)
    let files = snapshot_files(&server, &run_id).await;
    assert!(files.iter().any(|f| f.path == "numbers.txt"));
    let restored = tempfile::tempdir().expect("restore dir");
    assert_succeeded(&restore(&server, &run_id, restored.path()).await);
    let names: Vec<_> = std::fs::read_dir(restored.path())
        .expect("restored dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        ["numbers.txt"],
        "the snapshot holds the command's file alone"
    );
    assert!(
        std::fs::read(restored.path().join("numbers.txt")).expect("restored") == expected_dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_fails_or_is_killed_commits_nothing() {
    let server = TestServer::start(Backend::Postgres).await;
    let programs = tempfile::tempdir().expect("programs");
    let exits = script(
        programs.path(),
        "exits.sh",
        "seq 1 100000; echo 'dump broke' >&2; exit 3",
    );
    let killed = script(programs.path(), "killed.sh", "seq 1 100000; kill -KILL $$");
    let exit_command = define(&server, "exits", &exits, &[], 60, "exits.sql").await;
    let killed_command = define(&server, "killed", &killed, &[], 60, "killed.sql").await;
    let _worker = worker(&server, "commands-fail", "exits,killed");

    for (command, expected) in [
        (exit_command, "exited with status 3; stderr: dump broke"),
        (killed_command, "was killed by signal 9"),
    ] {
        let target = tempfile::tempdir().expect("target");
        let job = create_job(
            &server,
            pb::Job {
                name: format!("failing-{command}"),
                target: filesystem(target.path()),
                command_sources: vec![source(&command)],
                max_attempts: 1,
                ..Default::default()
            },
        )
        .await;
        let run = run_job_to_end(&server, &job).await;
        assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
        assert!(run.error.contains(expected), "{}", run.error);
        assert!(manifests(target.path()).is_empty(), "a snapshot was stored");
        assert!(server
            .admin()
            .objects
            .list_snapshot_files(pb::ListSnapshotFilesRequest {
                run_id: run.id.clone(),
                ..Default::default()
            })
            .await
            .map(|answer| answer.into_inner().files.is_empty())
            .unwrap_or(true));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_allow_a_command_refuses_it() {
    let server = TestServer::start(Backend::Postgres).await;
    let programs = tempfile::tempdir().expect("programs");
    let ran = programs.path().join("ran");
    let touch = script(programs.path(), "touch.sh", "touch \"$1\"; echo hi");
    let command = define(
        &server,
        "touch",
        &touch,
        &[ran.display().to_string().as_str()],
        60,
        "hi.txt",
    )
    .await;
    let target = tempfile::tempdir().expect("target");
    let job = create_job(
        &server,
        pb::Job {
            name: "refused".into(),
            target: filesystem(target.path()),
            command_sources: vec![source(&command)],
            max_attempts: 1,
            ..Default::default()
        },
    )
    .await;
    // Allows another command, not this one.
    let _worker = worker(&server, "commands-refuse", "something-else");
    let run = run_job_to_end(&server, &job).await;
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    assert!(
        run.error
            .contains("command \"touch\" is not allowed on this worker"),
        "{}",
        run.error
    );
    assert!(!ran.exists(), "the command ran");
    assert!(
        std::fs::read_dir(target.path())
            .expect("target")
            .next()
            .is_none(),
        "the refused run wrote to its target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_and_post_hooks_see_the_outcome() {
    let server = TestServer::start(Backend::Postgres).await;
    let programs = tempfile::tempdir().expect("programs");
    let log = programs.path().join("hooks.log");
    let log_string = log.display().to_string();
    let log_arg = log_string.as_str();
    let note = script(programs.path(), "note.sh", "echo \"$2\" >> \"$1\"");
    let outcome = script(
        programs.path(),
        "outcome.sh",
        "echo \"post $COFFER_RUN_STATE $COFFER_RUN_KIND $COFFER_RUN_ID $COFFER_JOB_ID \
         $COFFER_SOURCE_PATH error=$COFFER_RUN_ERROR\" >> \"$1\"",
    );
    let dump_script = script(
        programs.path(),
        "dump.sh",
        "echo source >> \"$1\"; echo data",
    );
    let stall_script = script(programs.path(), "stall.sh", "sleep 30");
    let first = define(&server, "first", &note, &[log_arg, "pre first"], 60, "").await;
    let second = define(&server, "second", &note, &[log_arg, "pre second"], 60, "").await;
    let post = define(&server, "post", &outcome, &[log_arg], 60, "").await;
    let dump = define(&server, "dump", &dump_script, &[log_arg], 60, "out.txt").await;
    let stall = define(&server, "stall", &stall_script, &[], 1, "").await;
    let _worker = worker(&server, "commands-hooks", "first,second,post,dump,stall");

    let tree = tempfile::tempdir().expect("tree");
    write(&tree.path().join("file"), b"x");
    let target = tempfile::tempdir().expect("target");
    let job = create_job(
        &server,
        pb::Job {
            name: "hooked".into(),
            source_path: tree.path().display().to_string(),
            target: filesystem(target.path()),
            command_sources: vec![source(&dump)],
            pre_hook_command_ids: vec![first.clone(), second.clone()],
            post_hook_command_ids: vec![post.clone()],
            max_attempts: 1,
            ..Default::default()
        },
    )
    .await;
    let run = backup_job(&server, &job).await;
    let lines = std::fs::read_to_string(&log).expect("hook log");
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[..3], ["pre first", "pre second", "source"]);
    assert_eq!(
        lines[3],
        format!(
            "post succeeded backup {} {job} {} error=",
            run.id,
            tree.path().display()
        )
    );

    // A pre-hook that times out fails the run before anything is written;
    // the post-hook still runs and is told why.
    std::fs::remove_file(&log).expect("clear the log");
    let stalled_target = tempfile::tempdir().expect("target");
    let stalled = create_job(
        &server,
        pb::Job {
            name: "stalled".into(),
            source_path: tree.path().display().to_string(),
            target: filesystem(stalled_target.path()),
            command_sources: vec![source(&dump)],
            pre_hook_command_ids: vec![first, stall],
            post_hook_command_ids: vec![post],
            max_attempts: 1,
            ..Default::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let run = run_job_to_end(&server, &stalled).await;
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    assert!(
        run.error
            .contains("pre-hook: command \"stall\" timed out after 1s"),
        "{}",
        run.error
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the hook was not killed"
    );
    assert!(
        std::fs::read_dir(stalled_target.path())
            .expect("target")
            .next()
            .is_none(),
        "data was written after a failed pre-hook"
    );
    let lines = std::fs::read_to_string(&log).expect("hook log");
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "pre first");
    assert!(
        lines[1].starts_with(&format!("post failed backup {}", run.id))
            && lines[1].contains("error=pre-hook: command \"stall\" timed out"),
        "{}",
        lines[1]
    );
}
