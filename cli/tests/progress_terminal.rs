//! The live progress display, rendered in a real pseudo-terminal.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use expectrl::process::unix::WaitStatus;
use expectrl::{Eof, Expect as _};
use support::{write_random, Standalone};

#[test]
fn backup_wait_on_a_terminal_shows_moving_figures_and_ends_at_100_percent() {
    let server = Standalone::start();
    let root = server.path("big");
    // Enough files that the run reports progress many times before it ends.
    for i in 0..400 {
        write_random(
            &root.join(format!("source/dir{}/file{i}.bin", i % 8)),
            256 * 1024,
            i,
        );
    }
    let job = server.job_over(&root, "big");

    let mut session =
        expectrl::Session::spawn(server.command(&["backup", &job, "--wait", "-o", "id"]))
            .expect("spawn in a pty");
    session
        .get_process_mut()
        .set_window_size(160, 40)
        .expect("window size");
    session.set_expect_timeout(Some(Duration::from_secs(300)));
    let captured = session.expect(Eof).expect("the command ends");
    let screen = String::from_utf8_lossy(captured.as_bytes()).to_string();
    let status = session.get_process().wait().expect("exit status");
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "{status:?}\n{screen}"
    );

    // Redraws carry "files N/M": several distinct figures were shown.
    let figures: BTreeSet<&str> = screen
        .split("files ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(
        figures.len() >= 3,
        "too few distinct figures: {figures:?}\n{screen}"
    );
    // The last figures drawn are the end: all of it, and only then 100%.
    let last = screen.rsplit("backup ").next().unwrap_or_default();
    assert!(last.starts_with("SUCCEEDED"), "{last}");
    assert!(
        last.contains("100%  files 408/408  100.00 MiB/100.00 MiB"),
        "{last}"
    );
    for frame in screen.split("backup ").filter(|f| f.starts_with("RUNNING")) {
        assert!(!frame.contains("100%"), "100% before the end: {frame}");
    }
    // A terminal gets redraws (carriage returns or cursor moves), not a log.
    assert!(
        screen.contains('\r') || screen.contains("\u{1b}["),
        "{screen}"
    );
}
