//! A tiny image data set and study file for tests and examples of studies:
//! three visually distinct classes (colour and stripe direction) with
//! per-image variation, as a class-folder tree (`dataset = "folders:DIR"`).
//! Real images, so a study over it runs the real encoders end to end in
//! seconds.

use std::path::Path;

use anyhow::{Context, Result};

/// Writes `DIR/train/CLASS/train_NN.png` (`train_per_class` each) and
/// `DIR/test/CLASS/test_NN.png` (`test_per_class` each), 64 x 64 RGB, for
/// the classes `red_rows`, `green_cols` and `blue_rows`.
pub fn write_striped_classes(
    dir: &Path,
    train_per_class: usize,
    test_per_class: usize,
) -> Result<()> {
    let classes = [
        ("red_rows", [200u8, 40, 40], true),
        ("green_cols", [40, 180, 60], false),
        ("blue_rows", [50, 60, 210], true),
    ];
    for (split, n) in [("train", train_per_class), ("test", test_per_class)] {
        for (ci, (name, colour, rows)) in classes.iter().enumerate() {
            let class_dir = dir.join(split).join(name);
            std::fs::create_dir_all(&class_dir)
                .with_context(|| format!("creating {}", class_dir.display()))?;
            for i in 0..n {
                let img = image::RgbImage::from_fn(64, 64, |x, y| {
                    let t = if *rows { y } else { x };
                    let stripe = ((t + i as u32 * 3 + ci as u32) / 6).is_multiple_of(2);
                    let shade = if stripe {
                        1.0
                    } else {
                        0.45 + 0.05 * (i % 5) as f32
                    };
                    image::Rgb(colour.map(|c| (c as f32 * shade) as u8))
                });
                let path = class_dir.join(format!("{split}_{i:02}.png"));
                img.save(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// The text of a small, fast study file over `dataset` (a data set spec)
/// with its embedding cache in `cache`: one seed, k = 4, three epochs, a
/// small module. `top` is added to its top-level fields and `tables` after
/// its last table (`[mam]`).
pub fn tiny_study(dataset: &str, cache: &Path, top: &str, tables: &str) -> String {
    format!(
        r#"name = "tiny"
dataset = "{dataset}"
seeds = [0]
k = [4]
evidence = 2
cache_dir = "{}"
{top}

[validation]
fraction = 0.3

[train]
epochs = 3
batch_size = 8

[mam]
hidden = 32
heads = 4
{tables}
"#,
        cache.display()
    )
}
