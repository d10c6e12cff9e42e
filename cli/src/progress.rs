//! Following a run: a live progress line on a terminal (`indicatif`), plain
//! lines otherwise. Everything shown comes from [`Figures`], built from the
//! run in one place, so a figure the API adds is shown by adding it there.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use coffer_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::{bytes, printable, short_enum};

/// What a run has done, as shown.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub kind: String,
    /// The phase: the run's state, or why it waits.
    pub phase: String,
    pub files_seen: i64,
    pub files_done: i64,
    pub bytes_seen: i64,
    pub bytes_done: i64,
    pub bytes_uploaded: i64,
    pub errors: i64,
    pub bytes_per_second: f64,
    pub current_path: String,
    /// Bandwidth limits in force, bytes per second (0: none).
    pub upload_limit: i64,
    pub download_limit: i64,
    /// The run has ended: only now may the figures say 100%.
    pub ended: bool,
}

impl Figures {
    /// The figures of a run as the API reports them.
    pub fn of(run: &pb::Run) -> Figures {
        let progress = run.progress.clone().unwrap_or_default();
        let state = short_enum(run.state().as_str_name());
        let phase = match run.waiting_reason() {
            pb::WaitingReason::Unspecified | pb::WaitingReason::Ready => state,
            reason => format!(
                "{state} ({})",
                short_enum(reason.as_str_name()).to_lowercase()
            ),
        };
        Figures {
            kind: short_enum(run.kind().as_str_name())
                .to_lowercase()
                .replace('_', " "),
            phase,
            files_seen: progress.files_seen,
            files_done: progress.files_done,
            bytes_seen: progress.bytes_seen,
            bytes_done: progress.bytes_done,
            bytes_uploaded: progress.bytes_uploaded,
            errors: progress.error_count,
            bytes_per_second: progress.bytes_per_second,
            current_path: progress.current_path,
            upload_limit: progress.upload_limit_bytes_per_second,
            download_limit: progress.download_limit_bytes_per_second,
            ended: matches!(
                run.state(),
                pb::RunState::Succeeded | pb::RunState::Failed | pb::RunState::Cancelled
            ),
        }
    }

    /// Done of seen. A running run counts bytes (nothing before its first
    /// bytes, never 100% while the walk may still find more); an ended one
    /// also counts files (some kinds, like garbage collection, end by files).
    pub fn fraction(&self) -> f64 {
        let ratio = |done: i64, seen: i64| {
            if seen <= 0 {
                0.0
            } else {
                (done as f64 / seen as f64).clamp(0.0, 1.0)
            }
        };
        let by_bytes = ratio(self.bytes_done, self.bytes_seen);
        if self.ended {
            return by_bytes.max(ratio(self.files_done, self.files_seen));
        }
        by_bytes.min(0.99)
    }

    fn eta(&self) -> Option<Duration> {
        let remaining = self.bytes_seen.saturating_sub(self.bytes_done);
        if self.bytes_per_second <= 0.0 || remaining <= 0 {
            return None;
        }
        Some(Duration::from_secs_f64(
            remaining as f64 / self.bytes_per_second,
        ))
    }

    /// `40%  files 12/300  1.2 GiB/2.0 GiB  45.3 MiB/s  ETA 18s  errors 0`,
    /// then the bandwidth limits in force if any (`limit up 10.0 MiB/s`);
    /// the percentage first: a narrow terminal cuts the end.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "{:.0}%  files {}/{}  {}/{}",
            (self.fraction() * 100.0).floor(),
            self.files_done,
            self.files_seen,
            bytes(clamp(self.bytes_done)),
            bytes(clamp(self.bytes_seen)),
        );
        if self.bytes_uploaded > 0 {
            text.push_str(&format!("  uploaded {}", bytes(clamp(self.bytes_uploaded))));
        }
        if self.bytes_per_second > 0.0 {
            text.push_str(&format!("  {}/s", bytes(self.bytes_per_second as u64)));
        }
        if let Some(eta) = self.eta() {
            text.push_str(&format!("  ETA {}", indicatif::HumanDuration(eta)));
        }
        text.push_str(&format!("  errors {}", self.errors));
        for (way, limit) in [("up", self.upload_limit), ("down", self.download_limit)] {
            if limit > 0 {
                text.push_str(&format!("  limit {way} {}/s", bytes(clamp(limit))));
            }
        }
        text
    }
}

fn clamp(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

/// Where progress goes.
pub enum Display {
    /// A redrawn bar on a terminal.
    Terminal(ProgressBar),
    /// A line per change, at most one a second, for logs and pipes.
    Lines { last: Option<(Instant, String)> },
}

const BAR_STEPS: u64 = 1000;

impl Display {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr() -> Display {
        if !std::io::stderr().is_terminal() {
            return Display::Lines { last: None };
        }
        let bar =
            ProgressBar::with_draw_target(Some(BAR_STEPS), ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{bar:20}] {wide_msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Display::Terminal(bar)
    }

    /// Shows the latest figures.
    pub fn show(&mut self, figures: &Figures) {
        match self {
            Display::Terminal(bar) => {
                bar.set_prefix(format!("{} {}", figures.kind, figures.phase));
                bar.set_position((figures.fraction() * BAR_STEPS as f64) as u64);
                let path = if figures.current_path.is_empty() {
                    String::new()
                } else {
                    format!("  {}", printable(&figures.current_path))
                };
                bar.set_message(format!("{}{path}", figures.summary()));
            }
            Display::Lines { last } => {
                let line = format!("{} {}: {}", figures.kind, figures.phase, figures.summary());
                let due = match last {
                    None => true,
                    Some((at, previous)) => {
                        *previous != line && at.elapsed() >= Duration::from_secs(1)
                    }
                };
                if due {
                    eprintln!("{line}");
                    *last = Some((Instant::now(), line));
                }
            }
        }
    }

    /// Shows the final figures and leaves them on screen.
    pub fn finish(&mut self, figures: &Figures) {
        if let Display::Lines { last } = self {
            let line = format!("{} {}: {}", figures.kind, figures.phase, figures.summary());
            if last.as_ref().is_none_or(|(_, previous)| *previous != line) {
                eprintln!("{line}");
            }
            return;
        }
        self.show(figures);
        if let Display::Terminal(bar) = self {
            bar.disable_steady_tick();
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_in_force_are_shown_after_the_counts() {
        let limited = Figures {
            upload_limit: 10 << 20,
            ..Figures::default()
        };
        assert!(
            limited.summary().contains("errors 0  limit up 10")
                && limited.summary().ends_with(" MiB/s"),
            "{}",
            limited.summary()
        );
        assert!(!Figures::default().summary().contains("limit"));
    }

    #[test]
    fn only_an_ended_run_shows_100_percent() {
        let running = Figures {
            files_seen: 1,
            files_done: 1,
            bytes_seen: 100,
            bytes_done: 100,
            ..Figures::default()
        };
        assert!(
            running.summary().starts_with("99%"),
            "{}",
            running.summary()
        );
        let ended = Figures {
            ended: true,
            ..running.clone()
        };
        assert!(ended.summary().starts_with("100%"), "{}", ended.summary());
        // A run that has seen no bytes yet is at 0%, whatever its file count.
        let walking = Figures {
            bytes_seen: 0,
            bytes_done: 0,
            ..running
        };
        assert!(walking.summary().starts_with("0%"), "{}", walking.summary());
    }
}
