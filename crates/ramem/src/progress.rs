//! Progress bars (rate and ETA) that share the terminal with log lines.

use std::sync::{Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// A bar counting `unit`s, with rate and ETA; hidden when stderr is not a terminal.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    multi().add(ProgressBar::new(len).with_style(style))
}

/// A `tracing` writer that prints above active progress bars instead of through them.
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
