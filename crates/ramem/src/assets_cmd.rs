//! `ramem assets install|list|path`.

use anyhow::Result;
use clap::{Args, Subcommand};
use ramem_assets::Cache;

#[derive(Subcommand)]
pub enum AssetsCommand {
    /// Install assets (default: the set the README's main job and the tests need).
    Install(InstallArgs),
    /// Show every known asset, whether it is installed, and where.
    List,
    /// Print where an installed asset is (for scripts: `ramem embed --input "$(ramem assets path sample-photos)"`).
    Path {
        /// Asset name (see `ramem assets list`).
        name: String,
    },
}

#[derive(Args)]
pub struct InstallArgs {
    /// Asset names (see `ramem assets list`); default: the standard set.
    pub names: Vec<String>,
    /// Install every known asset.
    #[arg(long)]
    pub all: bool,
}

pub fn run(command: AssetsCommand) -> Result<()> {
    let cache = Cache::from_env()?;
    match command {
        AssetsCommand::Install(args) => {
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
                    ramem_encode::registry::efficientnet_weights(variant)?;
                }
            }
            tracing::info!("assets ready in {}", cache.root().display());
        }
        AssetsCommand::List => {
            println!("cache: {}", cache.root().display());
            for s in cache.status() {
                let size = match s.installed {
                    true => format!("{:.1} MB", s.size_bytes as f64 / 1e6),
                    false => String::new(),
                };
                let state = if s.installed {
                    "installed"
                } else {
                    "not installed"
                };
                println!(
                    "{:<20} {state:<13} {size:>10}  {}\n{:<20} {}",
                    s.name,
                    s.path.display(),
                    "",
                    s.description
                );
            }
        }
        AssetsCommand::Path { name } => println!("{}", cache.require(&name)?.display()),
    }
    Ok(())
}
