//! `ramem study --config FILE.toml --out DIR` (the runner is `ramem-study`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ramem_study::{run_study, StudyConfig};

#[derive(Args)]
pub struct StudyArgs {
    /// The study file (TOML; see examples/ and docs/STUDY.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory for reports, memories and evidence.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &StudyArgs) -> Result<()> {
    let config = StudyConfig::read(&args.config)?;
    let study = run_study(&config, &args.out)
        .with_context(|| format!("study {}", args.config.display()))?;
    println!("{}", study.report.to_markdown());
    Ok(())
}
