//! `ramem embed-text`: captions (one per line) -> N x D float32 .npy.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::models::{self, TEXT_MODELS};
use crate::progress;

#[derive(Args)]
pub struct EmbedTextArgs {
    /// Text encoder.
    #[arg(long, default_value = "minilm-l6", help = format!("Text encoder: {TEXT_MODELS}"))]
    pub model: String,
    /// A UTF-8 text file with one caption per line (an empty line is an empty caption).
    #[arg(long)]
    pub input: PathBuf,
    /// Output .npy (N x D float32, L2-normalised).
    #[arg(long)]
    pub out: PathBuf,
    /// Captions per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

pub fn run(args: &EmbedTextArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let text = std::fs::read_to_string(&args.input).with_context(|| {
        format!(
            "{}: cannot read captions (a UTF-8 text file is expected)",
            args.input.display()
        )
    })?;
    let captions: Vec<&str> = text.lines().collect();
    if captions.is_empty() {
        bail!("{}: no captions (the file is empty)", args.input.display());
    }
    let model = models::load_text_model(&args.model, &models::device())?;
    let dim = model.dim();
    let bar = progress::bar(captions.len() as u64, "captions");
    let mut rows = Vec::with_capacity(captions.len() * dim);
    for batch in captions.chunks(args.batch) {
        let emb = model.embed(batch)?;
        rows.extend(emb.flatten_all()?.to_vec1::<f32>()?);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    ramem_store::npy::write_f32_matrix(&args.out, captions.len(), dim, &rows)?;
    tracing::info!(
        "wrote {} x {dim} caption embeddings to {}",
        captions.len(),
        args.out.display()
    );
    Ok(())
}
