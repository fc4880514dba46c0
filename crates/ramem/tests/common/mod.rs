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
