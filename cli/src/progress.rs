//! Progress on stderr with indicatif: shown only on a terminal, never with `--json`,
//! `--quiet` or `--verbose` (where log lines would tear the bar).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use ecr_backup_shared::progress::Reporter;
use ecr_backup_shared::{Digest, RepositoryName};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting images, with the bytes moved in its message.
pub struct Bar {
    bar: ProgressBar,
    bytes: AtomicU64,
}

impl Bar {
    /// A bar if progress should be shown, else a hidden one.
    pub fn new(show: bool, verb: &str) -> Bar {
        Bar::counting(show, verb, "images")
    }

    /// A bar whose position counts `unit` (`images`, `blobs`).
    pub fn counting(show: bool, verb: &str, unit: &str) -> Bar {
        let target = if show && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {verb} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{msg}} ({{elapsed}})"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Bar {
            bar,
            bytes: AtomicU64::new(0),
        }
    }

    /// Removes the bar before the summary is printed.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Reporter for Bar {
    fn images_found(&self, n: u64) {
        self.bar.inc_length(n);
    }

    fn bytes_transferred(&self, n: u64) {
        // The position counts images; the byte total rides in the message.
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.bar.set_message(human_bytes(total));
    }

    fn image_finished(&self, _repo: &RepositoryName, _digest: &Digest, _ok: bool) {
        self.bar.inc(1);
    }
}

/// `1.5 GiB` style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A plain counter bar (messages, blobs), hidden unless `show` and on a terminal.
pub fn counter(show: bool, total: u64, what: &str) -> ProgressBar {
    let target = if show && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {{pos}}/{{len}} {what} ({{elapsed}})"))
            .expect("valid template"),
    );
    bar
}
