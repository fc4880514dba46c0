//! `ramem classify`: ImageNet top-k of images with EfficientNet-Lite's own head.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{Tensor, D};
use clap::Args;

use crate::inputs::list_images;
use crate::models::{self, ImageModel};

#[derive(Args)]
pub struct ClassifyArgs {
    /// An EfficientNet-Lite model (efficientnet-lite0|1|2).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    /// A directory of images or a list file.
    #[arg(long)]
    pub input: PathBuf,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One image's top classes.
#[derive(serde::Serialize)]
struct Prediction<'a> {
    image: &'a str,
    top: Vec<(usize, &'a str, f32)>,
}

pub fn run(args: &ClassifyArgs) -> Result<()> {
    let (images, _) = list_images(&args.input, None)?;
    let device = models::device();
    let model = models::load_image_model(&args.model, &device)?;
    if !matches!(model, ImageModel::EfficientNet(_)) {
        bail!("classify needs a model with an ImageNet head (efficientnet-lite0|1|2)");
    }
    let names = ramem_assets::Cache::from_env()?.imagenet_class_names()?;
    let spec = model.spec();
    for image in &images {
        let pixels = match ramem_encode::preprocess::preprocess_file(&image.path, &spec) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("skipped {}: {e:#}", image.id);
                continue;
            }
        };
        let side = spec.crop as usize;
        let out = model.forward(&Tensor::from_vec(pixels, (1, 3, side, side), &device)?)?;
        let Some(logits) = out.logits else { continue };
        let probs: Vec<f32> = candle_nn::ops::softmax(&logits, D::Minus1)?
            .flatten_all()?
            .to_vec1()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top: Vec<(usize, &str, f32)> = order
            .iter()
            .take(args.top)
            .map(|&c| (c, names.get(c).map(String::as_str).unwrap_or("?"), probs[c]))
            .collect();
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&Prediction {
                    image: &image.id,
                    top
                })?
            );
        } else {
            let shown: Vec<String> = top
                .iter()
                .map(|(c, n, p)| format!("{n} ({c}) {:.1}%", p * 100.0))
                .collect();
            println!("{:<24} {}", image.id, shown.join(" | "));
        }
    }
    Ok(())
}
