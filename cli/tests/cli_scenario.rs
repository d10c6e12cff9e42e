//! The `coffer` binary against a real standalone control plane (TLS, SQLite,
//! embedded worker): the everyday sequence of an operator, end to end.

use crate::support;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;

use support::{write_random, Standalone};

#[test]
fn back_up_list_ls_diff_and_restore_through_the_cli() {
    let server = Standalone::start();
    let root = server.path("demo");
    std::fs::create_dir_all(root.join("source/docs")).expect("source");
    std::fs::write(root.join("source/docs/readme.txt"), "hello coffer\n").expect("write");
    write_random(&root.join("source/random.bin"), 1 << 20, 1);
    let job = server.job_over(&root, "daily");

    // Jobs are listed by name; a backup waits and exits 0 on success, with
    // plain progress lines when stderr is not a terminal.
    assert!(server.ok(&["jobs", "list"]).contains("daily"));
    let backup = server.run(&["backup", "daily", "--wait", "-o", "id"]);
    let stderr = String::from_utf8_lossy(&backup.stderr);
    assert!(backup.status.success(), "backup failed: {stderr}");
    assert!(
        stderr.contains("backup SUCCEEDED: 100%  files 3/3  1.00 MiB/1.00 MiB"),
        "no final progress line: {stderr}"
    );
    let first = String::from_utf8_lossy(&backup.stdout).trim().to_string();

    let snapshots = server.ok(&["snapshots", &job]);
    assert!(snapshots.contains(&first), "{snapshots}");
    let tree = server.ok(&["ls", &first]);
    assert!(
        tree.contains("docs/") && tree.contains("  readme.txt") && tree.contains("random.bin"),
        "{tree}"
    );
    assert!(tree.contains("1.00 MiB"), "sizes missing: {tree}");
    let subtree = server.ok(&["ls", &first, "docs"]);
    assert!(
        subtree.contains("readme.txt") && !subtree.contains("random.bin"),
        "{subtree}"
    );

    // A change, a second snapshot, and the difference with sizes.
    std::fs::write(root.join("source/docs/readme.txt"), "hello again, coffer\n").expect("write");
    write_random(&root.join("source/docs/new.bin"), 3000, 2);
    let second = server
        .ok(&["backup", &job, "--wait", "-o", "id"])
        .trim()
        .to_string();
    let diff = server.run(&["diff", &first, &second]);
    let changes = String::from_utf8_lossy(&diff.stdout);
    assert!(diff.status.success());
    assert!(
        changes.contains("+  docs/new.bin") && changes.contains("2.93 KiB"),
        "{changes}"
    );
    assert!(
        changes.contains("M  docs/readme.txt") && changes.contains("13 B -> 20 B"),
        "{changes}"
    );
    assert!(
        !changes.contains("random.bin"),
        "unchanged file listed: {changes}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&server.ok(&["diff", &first, &second, "-o", "json"]))
            .expect("diff JSON");
    // The directory holding the two changes changed its mtime only.
    let kinds: Vec<(&str, &str)> = json
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap_or(""),
                c["change"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("docs", "metadata"),
            ("docs/new.bin", "added"),
            ("docs/readme.txt", "changed")
        ]
    );

    // Restore the first snapshot and compare bytes.
    let restored = root.join("restored");
    let restored_text = restored.to_str().expect("UTF-8");
    server.ok(&["restore", &first, "--to", restored_text, "--wait"]);
    assert_eq!(
        std::fs::read(restored.join("random.bin")).expect("restored file"),
        std::fs::read(root.join("source/random.bin")).expect("source file")
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("docs/readme.txt")).expect("restored file"),
        "hello coffer\n"
    );
    let partial = root.join("partial");
    server.ok(&[
        "restore",
        &second,
        "--to",
        partial.to_str().expect("UTF-8"),
        "--include",
        "docs/new.bin",
        "--wait",
    ]);
    assert!(partial.join("docs/new.bin").is_file() && !partial.join("random.bin").exists());

    // Reads print JSON and YAML in the API's mapping.
    let runs: serde_json::Value = serde_json::from_str(&server.ok(&[
        "runs",
        "list",
        "--filter",
        &format!("job_id={job}"),
        "-o",
        "json",
    ]))
    .expect("JSON");
    assert!(runs.as_array().is_some_and(|r| r.len() == 2), "{runs}");
    assert!(server
        .ok(&["jobs", "get", &job, "-o", "yaml"])
        .contains("sourcePath:"));
    assert!(server.ok(&["runs", "errors", &first]).contains("PATH"));
}

#[test]
fn bad_input_names_the_field_and_exits_non_zero() {
    let server = Standalone::start();
    // The server's field violation, not a status dump.
    let refused = server.run(&[
        "jobs",
        "create",
        "--set",
        "name=bad",
        "--set",
        "source_path=relative/path",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("  job.source_path: "),
        "{stderr}"
    );
    assert!(!stderr.contains("metadata"), "raw status printed: {stderr}");
    // A field the API does not have is caught before sending.
    let unknown = server.run(&["jobs", "create", "--set", "sorce_path=/x"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"sorce_path\"") && stderr.contains("source_path"),
        "{stderr}"
    );
    // Unknown ids are the server's NotFound.
    let missing = server.run(&["jobs", "get", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
}

#[test]
fn login_saves_a_private_context_and_secrets_are_never_echoed() {
    let server = Standalone::start();
    // Login checks the token and writes it into a 0600 file.
    let mut login = server.command(&["login", "--name", "local"]);
    login
        .env_remove("COFFER_ENDPOINT")
        .env_remove("COFFER_CACERT");
    login.args([
        "--endpoint",
        &format!("localhost:{}", server.port),
        "--cacert",
        "coffer-data/tls/ca.pem",
    ]);
    let output = login.output().expect("login");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config = server.path("config/coffer/config.yaml");
    let mode = std::fs::metadata(&config)
        .expect("config file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(server.path("config/coffer"))
        .expect("dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    // The saved context alone reaches the server.
    let whoami = server
        .command(&["whoami"])
        .env_remove("COFFER_ENDPOINT")
        .env_remove("COFFER_CACERT")
        .env_remove("COFFER_TOKEN_FILE")
        .output()
        .expect("whoami");
    assert!(
        String::from_utf8_lossy(&whoami.stdout).contains("admin"),
        "{}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    assert!(server.ok(&["context", "list"]).contains("local"));

    // Secret values come from stdin and appear in no output.
    let secret_key = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    let mut create = server
        .command(&["secrets", "create", "minio", "--values", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write as _;
    create
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            format!("access_key_id: AKIAEXAMPLE123\nsecret_access_key: {secret_key}\n").as_bytes(),
        )
        .expect("write stdin");
    let created = create.wait_with_output().expect("secrets create");
    let mut everything = String::from_utf8_lossy(&created.stdout).to_string();
    everything.push_str(&String::from_utf8_lossy(&created.stderr));
    assert!(created.status.success(), "{everything}");
    // A repository passphrase, likewise from stdin.
    let passphrase = "correct horse battery staple, recovered";
    let mut create = server
        .command(&["secrets", "create", "recovery", "--passphrase-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    create
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{passphrase}\n").as_bytes())
        .expect("write stdin");
    let created = create.wait_with_output().expect("secrets create");
    everything.push_str(&String::from_utf8_lossy(&created.stdout));
    everything.push_str(&String::from_utf8_lossy(&created.stderr));
    assert!(created.status.success(), "{everything}");
    for args in [
        ["secrets", "list", "-o", "json"],
        ["secrets", "list", "-o", "yaml"],
        ["secrets", "list", "-o", "table"],
    ] {
        everything.push_str(&server.ok(&args));
    }
    assert!(everything.contains("minio"), "{everything}");
    assert!(
        everything.contains("SECRET_KIND_PASSPHRASE"),
        "{everything}"
    );
    for value in [secret_key, passphrase] {
        assert!(
            !everything.contains(value),
            "a secret value was printed: {everything}"
        );
    }
}

#[test]
fn key_slots_are_added_and_rotated_through_the_cli() {
    let server = Standalone::start();
    let root = server.path("keys");
    std::fs::create_dir_all(root.join("source")).expect("source");
    write_random(&root.join("source/data.bin"), 4096, 3);
    let job = server.job_over(&root, "keyed");
    server.ok(&["backup", &job, "--wait"]);
    let created = server.run_with_input(
        &[
            "secrets",
            "create",
            "second",
            "--passphrase-file",
            "-",
            "-o",
            "id",
        ],
        b"a second passphrase for the cli\n",
    );
    assert!(created.status.success(), "{created:?}");
    let secret = String::from_utf8_lossy(&created.stdout).trim().to_string();

    server.ok(&[
        "keys",
        "add",
        "--job",
        &job,
        "--passphrase-secret",
        &secret,
        "--wait",
    ]);
    server.ok(&["keys", "rotate", "--job", &job, "--keep", &secret, "--wait"]);
    let keyring: Vec<String> = std::fs::read_dir(root.join("repo/keyed/keyring"))
        .expect("keyring")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        keyring.iter().filter(|name| name.starts_with("2.")).count(),
        2,
        "generation 2 for the catalog's slot and the added one: {keyring:?}"
    );
    // Removing the only catalog slot is refused, naming the field.
    let buckets = server.ok(&["buckets", "list", "-o", "json"]);
    let value: serde_json::Value = serde_json::from_str(&buckets).expect("JSON");
    let catalog_slot = value
        .as_array()
        .and_then(|buckets| buckets.first())
        .and_then(|bucket| bucket["keySlots"].as_array())
        .and_then(|slots| {
            slots
                .iter()
                .find(|slot| slot["kind"] == "KEY_SLOT_KIND_CATALOG")
        })
        .and_then(|slot| slot["slotId"].as_str())
        .expect("the catalog slot listed")
        .to_string();
    let refused = server.run(&["keys", "remove", "--job", &job, &catalog_slot, "--wait"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("key_slots.slot_id"), "{stderr}");
}
