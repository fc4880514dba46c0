//! `ramem study --config FILE.toml --out DIR [--set KEY=VALUE]...` (the
//! runner is `ramem-study`).

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
    /// Change a setting of the study file: `KEY=VALUE`, KEY a dotted path
    /// (`mam.vote`, `train.epochs`, `seeds`) and VALUE a TOML value
    /// (`'[0, 1]'`, `1e-3`, `auto`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

pub fn run(args: &StudyArgs) -> Result<()> {
    let config = StudyConfig::read_with(&args.config, &args.sets)?;
    let study = run_study(&config, &args.out)
        .with_context(|| format!("study {}", args.config.display()))?;
    println!("{}", study.report.to_markdown());
    Ok(())
}
