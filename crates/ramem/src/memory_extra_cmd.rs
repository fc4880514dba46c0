//! `ramem memory dedup`: a copy of a memory without the entries that nearly
//! duplicate a test set.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use ramem_index::{copy_memory_without, find_near_duplicates};
use ramem_store::memory::Memory;

/// Name of the record of a deduplication, written inside the new memory.
pub const DEDUP_RECORD: &str = "dedup.json";

#[derive(Args)]
pub struct DedupArgs {
    /// The memory to deduplicate (left unchanged).
    #[arg(long)]
    pub memory: PathBuf,
    /// T x D float .npy of test embeddings (from the memory's key encoder); rows are L2-normalised.
    #[arg(long)]
    pub test: PathBuf,
    /// Drop every entry whose key has cosine similarity >= this with any test row; in (-1, 1].
    #[arg(long, default_value_t = 0.95, allow_hyphen_values = true)]
    pub threshold: f64,
    /// The new memory (a missing or empty directory); it also receives dedup.json, the dropped ids.
    #[arg(long)]
    pub out: PathBuf,
}

/// Finds the near duplicates, writes the memory without them and records
/// the dropped ids in `OUT/dedup.json`.
pub fn dedup(args: &DedupArgs) -> Result<()> {
    if !(args.threshold > -1.0 && args.threshold <= 1.0) {
        bail!(
            "--threshold {} is outside (-1, 1] (a cosine similarity)",
            args.threshold
        );
    }
    check_out(&args.memory, &args.out)?;
    let memory = Memory::open(&args.memory)?;
    let test = ramem_store::npy::read_f32_matrix(&args.test)?;
    let dim = memory.key_dim();
    if test.cols != dim {
        bail!(
            "{}: test embeddings have {} dimensions but the memory's keys have {dim} ({}, at {})",
            args.test.display(),
            test.cols,
            memory.manifest().key.encoder,
            args.memory.display()
        );
    }
    let dropped = find_near_duplicates(&memory, &test.data, dim, args.threshold as f32)
        .with_context(|| {
            format!(
                "comparing {} with {}",
                args.memory.display(),
                args.test.display()
            )
        })?;
    let report = copy_memory_without(&memory, &dropped, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let record = serde_json::json!({
        "source": args.memory.to_string_lossy(),
        "test": args.test.to_string_lossy(),
        "threshold": args.threshold,
        "dropped": dropped,
    });
    let mut text = serde_json::to_vec_pretty(&record)?;
    text.push(b'\n');
    ramem_store::write_atomic(args.out.join(DEDUP_RECORD), &text)?;
    println!(
        "dropped {} of {} entries (cosine >= {} with one of {} test rows); {} entries in {} (dropped ids in {})",
        report.dropped,
        report.source_rows,
        args.threshold,
        test.rows,
        report.kept,
        args.out.display(),
        args.out.join(DEDUP_RECORD).display()
    );
    Ok(())
}

/// Refuses an output that is the input memory or an existing non-empty
/// directory (or a file).
fn check_out(memory: &Path, out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let same = match (memory.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => memory == out,
    };
    if same {
        bail!(
            "--out {} is the memory being deduplicated; give a new directory",
            out.display()
        );
    }
    if !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    let mut entries =
        std::fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))?;
    if entries.next().is_some() {
        bail!(
            "--out {} exists and is not empty; give a new or empty directory",
            out.display()
        );
    }
    Ok(())
}
