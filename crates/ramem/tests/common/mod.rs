//! Helpers shared by the black-box tests of the `ramem` binary.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

pub mod http;

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `ramem` binary; a panic in it fails the test whatever the exit code.
pub fn ramem(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ramem"))
        .args(args)
        .output()
        .expect("run ramem");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "ramem panicked:\n{stderr}");
    out
}

/// Runs the `ramem` binary, which must succeed: its stdout and stderr.
pub fn ok(args: &[&str]) -> (String, String) {
    let out = ramem(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ramem {args:?} failed:\n{err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

/// Runs the `ramem` binary, which must fail: its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = ramem(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "ramem {args:?} succeeded:\n{err}");
    err
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Deterministic pseudo-random rows in [-0.5, 0.5).
pub fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// `v` scaled to unit length.
pub fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Real Fashion-MNIST images of `classes` written as class folders under
/// `root/data` (`train_per_class` training and `test_per_class` test
/// images, each captioned) and a memory of the training images with image
/// and MiniLM caption values at `root/mem`: the data set's spec and the
/// memory's path.
pub fn fashion_memory(
    root: &Path,
    classes: &[&str],
    train_per_class: usize,
    test_per_class: usize,
) -> (String, std::path::PathBuf) {
    let idx = ramem_assets::Cache::from_env()
        .and_then(|cache| cache.fashion_mnist_dir())
        .expect("fashion-mnist is installed (scripts/setup.sh --test)");
    let data = root.join("data");
    ramem_study::fixtures::write_fashion_folders(
        &idx,
        &data,
        classes,
        train_per_class,
        test_per_class,
    )
    .unwrap();
    let spec = format!("folders:{}", data.display());
    let memory = root.join("mem");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&memory),
        "--input",
        &spec,
        "--split",
        "train",
        "--values",
        "both",
    ]);
    (spec, memory)
}
