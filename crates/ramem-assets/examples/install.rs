//! Installs assets into the cache (`$RAMEM_HOME` or `~/.cache/ramem`) and
//! prints the resulting status.
//!
//! `cargo run -p ramem-assets --example install [NAME...]`
//! (no names: the default set).

use ramem_assets::{Cache, InstallOptions, DEFAULT_ASSETS};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = if args.is_empty() {
        DEFAULT_ASSETS.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let cache = Cache::from_env()?;
    cache.install(&names, &InstallOptions::default())?;
    for s in cache.status() {
        println!(
            "{:<20} {:<13} {:>10} KiB  {}",
            s.name,
            if s.installed {
                "installed"
            } else {
                "not installed"
            },
            s.size_bytes / 1024,
            s.path.display()
        );
    }
    Ok(())
}
