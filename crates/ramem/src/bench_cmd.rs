//! `ramem bench-encode`: image-encoder throughput on preprocessed pixels.
//!
//! Reads `(N, 3, S, S)` float32 pixels from a .npy, runs the encoder over them
//! in batches `--repeats` times after one warm-up batch, prints one JSON line
//! with per-repeat timings, and writes the embeddings of the last repeat.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;

use crate::models;

#[derive(Args)]
pub struct BenchEncodeArgs {
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    /// float32 .npy of shape (N, 3, S, S) holding preprocessed pixels.
    #[arg(long)]
    pub pixels: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Where to write the (N, D) embeddings.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &BenchEncodeArgs) -> Result<()> {
    if args.batch == 0 || args.repeats == 0 {
        bail!("--batch and --repeats must be at least 1");
    }
    let (shape, flat) = ramem_store::npy::read_f32_array(&args.pixels)?;
    if shape.len() != 4 || shape[1] != 3 || shape[2] != shape[3] {
        bail!(
            "{}: expected shape (N, 3, S, S), found {shape:?}",
            args.pixels.display()
        );
    }
    let (n, side) = (shape[0], shape[2]);
    let device = models::device();
    let model = models::load_image_model(&args.model, &device)?;
    let per_image = 3 * side * side;
    let all = Tensor::from_slice(&flat, (n, 3, side, side), &device)?;
    let run_all = || -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(n * model.dim());
        for (i, batch) in flat.chunks(args.batch * per_image).enumerate() {
            let count = batch.len() / per_image;
            let x = all.narrow(0, i * args.batch, count)?;
            out.extend(
                model
                    .forward(&x)?
                    .embedding
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(out)
    };
    // warm-up: one batch
    let warm = flat.len().min(args.batch * per_image);
    model.forward(&Tensor::from_vec(
        flat[..warm].to_vec(),
        (warm / per_image, 3, side, side),
        &device,
    )?)?;
    let mut seconds = Vec::with_capacity(args.repeats);
    let mut last = Vec::new();
    for _ in 0..args.repeats {
        let start = Instant::now();
        last = run_all()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    if let Some(out) = &args.out {
        ramem_store::npy::write_f32_matrix(out, n, model.dim(), &last)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let report = serde_json::json!({
        "model": args.model,
        "batch": args.batch,
        "threads": rayon::current_num_threads(),
        "images": n,
        "seconds": seconds,
        "images_per_s": seconds.iter().map(|s| n as f64 / s).collect::<Vec<_>>(),
    });
    println!("{report}");
    Ok(())
}
