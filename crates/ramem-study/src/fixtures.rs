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
/// small module, and every other setting that would be `auto` given a
/// value (learning rates 1e-3, weight decay 1e-4, no logit adjustment, no
/// fusion, no vote), so that it trains once per method. `top` is added to
/// its top-level fields and `tables` after its last table (`[mam]`); a
/// `fusion` or `vote` there replaces the fixed one.
pub fn tiny_study(dataset: &str, cache: &Path, top: &str, tables: &str) -> String {
    let unless_given = |key: &str, line: &str| -> String {
        let given = tables
            .lines()
            .any(|l| l.split('=').next().map(str::trim) == Some(key));
        if given {
            String::new()
        } else {
            format!("{line}\n")
        }
    };
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
learning_rate = 1e-3
head_learning_rate = 1e-3
weight_decay = 1e-4
logit_adjustment = 0.0

[mam]
hidden = 32
heads = 4
{}{}{tables}
"#,
        cache.display(),
        unless_given("fusion", "fusion = false"),
        unless_given("vote", "vote = \"off\""),
    )
}

/// Writes real Fashion-MNIST images of `classes` (by name) from the IDX
/// files in `idx_dir` as a class-folder tree: `DIR/train/CLASS/NNNNN.png`
/// (the first `train_per_class` training images of each class) and
/// `DIR/test/CLASS/NNNNN.png` (the first `test_per_class` test images),
/// each with a caption beside it (`NNNNN.txt`, "a photo of a CLASS, item
/// N"), so a memory built from the tree has text values too.
pub fn write_fashion_folders(
    idx_dir: &Path,
    dir: &Path,
    classes: &[&str],
    train_per_class: usize,
    test_per_class: usize,
) -> Result<()> {
    let names = ramem_data::FASHION_MNIST_CLASSES
        .map(str::to_string)
        .to_vec();
    let data = ramem_data::read_idx(idx_dir, Some(names.clone()))
        .with_context(|| format!("reading Fashion-MNIST from {}", idx_dir.display()))?;
    for (split, set, per_class) in [
        ("train", &data.train, train_per_class),
        ("test", &data.test, test_per_class),
    ] {
        for class in classes {
            let label = names
                .iter()
                .position(|n| n == class)
                .with_context(|| format!("Fashion-MNIST has no class {class:?}"))?;
            let folder = dir.join(split).join(class.replace('/', "-"));
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("creating {}", folder.display()))?;
            let examples = set.examples.iter().filter(|e| e.label == label);
            for (i, example) in examples.take(per_class).enumerate() {
                let image = example.image.load()?;
                let path = folder.join(format!("{i:05}.png"));
                image
                    .save(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
                let caption = format!("a photo of a {}, item {i}", class.to_lowercase());
                std::fs::write(path.with_extension("txt"), caption)?;
            }
        }
    }
    Ok(())
}
