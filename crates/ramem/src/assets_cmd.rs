//! `ramem assets install|list`.

use anyhow::Result;
use clap::Args;
use ramem_assets::Cache;

#[derive(Args)]
pub struct InstallArgs {
    /// Asset names (see `ramem assets list`); default: the standard set.
    pub names: Vec<String>,
    /// Install every known asset.
    #[arg(long)]
    pub all: bool,
}

pub fn install(args: &InstallArgs) -> Result<()> {
    let cache = Cache::from_env()?;
    let names: Vec<&str> = if args.all {
        ramem_assets::ALL.to_vec()
    } else if args.names.is_empty() {
        ramem_assets::DEFAULT_ASSETS.to_vec()
    } else {
        args.names.iter().map(String::as_str).collect()
    };
    cache.install(&names, &Default::default())?;
    // Convert EfficientNet checkpoints once, so later commands start at once.
    for name in &names {
        if let Some(variant) = ramem_encode::efficientnet::LiteVariant::from_name(name) {
            crate::models::efficientnet_weights(variant)?;
        }
    }
    tracing::info!("assets ready in {}", cache.root().display());
    Ok(())
}

pub fn list() -> Result<()> {
    let cache = Cache::from_env()?;
    println!("cache: {}", cache.root().display());
    for s in cache.status() {
        println!(
            "{:<20} {:<13} {:>10}  {}\n{:<20} {}",
            s.name,
            if s.installed {
                "installed"
            } else {
                "not installed"
            },
            if s.installed {
                format!("{:.1} MB", s.size_bytes as f64 / 1e6)
            } else {
                String::new()
            },
            s.path.display(),
            "",
            s.description
        );
    }
    Ok(())
}
