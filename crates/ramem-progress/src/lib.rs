//! Progress of ramem's long work (encoding, building and importing memories,
//! building indexes, training): [`bar`] gives a [`Progress`] counter that
//! shows, on a terminal, a bar with position, rate and ETA, and otherwise
//! (a CI log, `nohup`, a pipe) writes a log line with the same figures
//! every few seconds ([`LOG_INTERVAL`], or `RAMEM_PROGRESS_INTERVAL`
//! seconds), so that a long run is never silent. Log lines that
//! other code writes while bars are drawn go through [`LogWriter`], which
//! prints them above the bars instead of through them; [`init_logging`]
//! sets up that log for a process (the command line, a Python session).

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How often a counter logs its position when stderr is not a terminal,
/// unless `RAMEM_PROGRESS_INTERVAL` (seconds) says otherwise.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The environment variable that sets the log interval in seconds.
pub const INTERVAL_ENV: &str = "RAMEM_PROGRESS_INTERVAL";

fn log_interval() -> Duration {
    static INTERVAL: OnceLock<Duration> = OnceLock::new();
    *INTERVAL.get_or_init(|| {
        std::env::var(INTERVAL_ENV)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(LOG_INTERVAL)
    })
}

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// Whether progress is drawn as bars (stderr is a terminal) rather than logged.
pub fn draws_bars() -> bool {
    static TERMINAL: OnceLock<bool> = OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::stderr().is_terminal())
}

/// A counter of `len` units of work, shown as described in the crate docs.
/// Cheap to update from several threads.
pub struct Progress {
    bar: ProgressBar,
    unit: String,
    log: Option<Mutex<LogState>>,
}

struct LogState {
    started: Instant,
    last: Instant,
    message: String,
}

/// A counter of `len` units (`images`, `rows`, `steps`).
pub fn bar(len: u64, unit: &str) -> Progress {
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = multi().add(ProgressBar::new(len).with_style(style));
    let log = (!draws_bars()).then(|| {
        let now = Instant::now();
        Mutex::new(LogState {
            started: now,
            last: now,
            message: String::new(),
        })
    });
    Progress {
        bar,
        unit: unit.to_string(),
        log,
    }
}

impl Progress {
    /// What is being counted, shown next to the figures.
    pub fn set_message(&self, message: impl Into<String>) {
        let message = message.into();
        if let Some(log) = &self.log {
            lock(log).message = message.clone();
        }
        self.bar.set_message(message);
    }

    /// Adds `n` units done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        self.maybe_log();
    }

    /// Sets the units done.
    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
        self.maybe_log();
    }

    /// Sets the units in all (work whose size is known only once started).
    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    /// `done` of `total` units: what a library's `progress(done, total)`
    /// callback reports, total known only once the work started.
    pub fn set_progress(&self, done: u64, total: u64) {
        self.set_length(total);
        self.set_position(done);
    }

    /// Units done so far.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Units in all.
    pub fn len(&self) -> u64 {
        self.bar.length().unwrap_or(0)
    }

    /// Whether there is no work to count.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the bar (the work is done or abandoned).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn maybe_log(&self) {
        let Some(log) = &self.log else { return };
        let mut state = lock(log);
        let now = Instant::now();
        if now.duration_since(state.last) < log_interval() {
            return;
        }
        state.last = now;
        let line = progress_line(
            &state.message,
            self.position(),
            self.len(),
            &self.unit,
            now.duration_since(state.started),
        );
        drop(state);
        tracing::info!("{line}");
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `encoding train: 1200/60000 images (97.3/s, ETA 10m25s)`.
pub fn progress_line(
    message: &str,
    done: u64,
    total: u64,
    unit: &str,
    elapsed: Duration,
) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        done as f64 / seconds
    } else {
        0.0
    };
    let eta = if rate > 0.0 && total > done {
        format_duration((total - done) as f64 / rate)
    } else {
        "-".to_string()
    };
    let prefix = if message.is_empty() {
        String::new()
    } else {
        format!("{message}: ")
    };
    format!("{prefix}{done}/{total} {unit} ({rate:.1}/s, ETA {eta})")
}

/// `75.2` -> `1m15s`, `3725` -> `1h02m05s`.
fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A `tracing` writer that prints above active progress bars instead of
/// through them: install it with `tracing_subscriber::fmt().with_writer(LogWriter::default)`.
#[derive(Default)]
pub struct LogWriter {
    buffer: Vec<u8>,
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        static LOCK: Mutex<()> = Mutex::new(());
        let _guard = LOCK.lock();
        let text = String::from_utf8_lossy(&self.buffer);
        let text = text.trim_end_matches('\n');
        if text.is_empty() {
            return;
        }
        let m = multi();
        if m.is_hidden() {
            eprintln!("{text}");
        } else {
            m.suspend(|| eprintln!("{text}"));
        }
    }
}

/// A bar for work that resumes where an earlier run stopped: made on the
/// first report (when the total is known), starting at what was already
/// done, with a log line saying so.
pub struct ResumedBar {
    unit: &'static str,
    what: String,
    bar: Option<Progress>,
}

impl ResumedBar {
    /// A bar of `unit`s for work on `what` (named in the resume line).
    pub fn new(unit: &'static str, what: impl Into<String>) -> ResumedBar {
        ResumedBar {
            unit,
            what: what.into(),
            bar: None,
        }
    }

    /// `done` of `total` units done, of which `before` by an earlier run.
    pub fn update(&mut self, before: u64, total: u64, done: u64) {
        let (unit, what) = (self.unit, &self.what);
        let bar = self.bar.get_or_insert_with(|| {
            if before > 0 {
                tracing::info!("resuming: {before} of {total} {unit} already in {what}");
            }
            let b = bar(total, unit);
            b.set_position(before);
            b
        });
        bar.set_position(done);
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish();
        }
    }
}

/// The levels [`init_logging`] takes as a bare word; a filter with targets
/// (`ramem_index=debug`) is taken too.
pub const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Sends the process's log to stderr through [`LogWriter`] at `level` (or
/// what `RUST_LOG` says), coloured on a terminal. A bare word that is no
/// level is refused, saying which are.
pub fn init_logging(level: &str) -> Result<(), String> {
    let bare_word = !level.contains(['=', ',']);
    if bare_word && !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "--log {level:?} is not a log level; use one of {} (or a filter such as ramem_index=debug)",
            LOG_LEVELS.join(", ")
        ));
    }
    let from_flag = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("--log {level:?}: {e}"))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or(from_flag);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter::default)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| format!("the log is already set up: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_give_position_rate_and_eta() {
        let line = progress_line(
            "encoding train",
            1200,
            60000,
            "images",
            Duration::from_secs(12),
        );
        assert_eq!(
            line,
            "encoding train: 1200/60000 images (100.0/s, ETA 9m48s)"
        );
        let done = progress_line("", 5, 5, "rows", Duration::from_secs(1));
        assert_eq!(done, "5/5 rows (5.0/s, ETA -)");
        assert_eq!(format_duration(3725.0), "1h02m05s");
        assert_eq!(format_duration(4.4), "4s");
    }
}
