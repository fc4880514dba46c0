//! The real data sets where this machine has them (Debian-packaged
//! Fashion-MNIST and Open Clip Art); each test prints a note and passes when
//! its directory is absent.

use std::path::Path;

use ramem_data::protocol::{asymmetric_noise, long_tail_subset, FASHION_MNIST_ASYMMETRIC_FLIPS};
use ramem_data::*;

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";
const OPENCLIPART: &str = "/usr/share/openclipart";

#[test]
fn fashion_mnist() {
    let dir = Path::new(FASHION_MNIST);
    if !dir.join("train-images-idx3-ubyte.gz").is_file() {
        eprintln!("note: {FASHION_MNIST} is absent; skipping the Fashion-MNIST test");
        return;
    }
    let names = FASHION_MNIST_CLASSES.map(String::from).to_vec();
    let data = read_idx(dir, Some(names)).unwrap();
    assert_eq!(data.train.len(), 60_000);
    assert_eq!(data.test.len(), 10_000);
    assert_eq!(data.class_names()[9], "Ankle boot");
    assert_eq!(data.train.class_counts().unwrap(), [6_000; 10]);
    assert_eq!(data.test.class_counts().unwrap(), [1_000; 10]);
    let img = data.test.examples[0].image.load().unwrap();
    assert_eq!((img.width(), img.height()), (28, 28));

    // The protocols on it.
    let labels = data.train.labels();
    let lt = long_tail_subset(&labels, 10, 5000, 100.0, 0).unwrap();
    assert_eq!(
        lt.len(),
        5000 + 2997 + 1796 + 1077 + 645 + 387 + 232 + 139 + 83 + 50
    );
    let noisy = asymmetric_noise(&labels, 10, &FASHION_MNIST_ASYMMETRIC_FLIPS, 0.4, 0).unwrap();
    assert_eq!(noisy.flipped, 5 * 2_400);

    let spec = parse_dataset_spec(&format!("idx:{FASHION_MNIST};names=fashion-mnist")).unwrap();
    assert_eq!(load(&spec).unwrap().test.class_names[0], "T-shirt/top");
}

#[test]
fn open_clip_art() {
    let root = Path::new(OPENCLIPART);
    if !root.join("png").is_dir() {
        eprintln!("note: {OPENCLIPART} is absent; skipping the Open Clip Art test");
        return;
    }
    let all = read_openclipart(root, 1).unwrap();
    // 6,900 PNG files (symbolic links into further categories are skipped).
    assert_eq!(all.len(), 6_900);
    assert!(all.class_names.iter().any(|c| c == "shapes/stars"));
    let captioned = all.examples.iter().filter(|e| e.caption.is_some()).count();
    eprintln!(
        "Open Clip Art: {} images, {} classes, {captioned} captioned, {} warnings",
        all.len(),
        all.num_classes(),
        all.warnings.len()
    );
    for w in all.warnings.iter().take(5) {
        eprintln!("  warning: {w}");
    }
    assert!(captioned as f64 > 0.95 * all.len() as f64);
    let scale = all
        .examples
        .iter()
        .find(|e| e.id == "science/scale_01.png")
        .expect("science/scale_01.png");
    assert_eq!(
        scale.caption.as_deref(),
        Some("scale. tags: tool, mass, scale, work")
    );
    assert_eq!(all.class_names[scale.label], "science");

    let big = read_openclipart(root, 50).unwrap();
    let counts = big.class_counts().unwrap();
    assert!(counts.iter().all(|&c| c >= 50));
    assert!(big.num_classes() < all.num_classes());
    assert_eq!(big, read_openclipart(root, 50).unwrap(), "deterministic");
}
