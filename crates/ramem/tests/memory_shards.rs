//! A memory built in parts (`memory build --shard I/N`) by several
//! processes at once, and once as Ray tasks on a local Ray cluster
//! (`examples/ray_build_memory.py`, Ray from `scripts/setup.sh --test`),
//! then merged (`memory merge`): the same rows, bit for bit, in the same
//! order as one `memory build` of the whole input, on real Fashion-MNIST
//! images with MiniLM caption values. Parts that do not belong together
//! are refused, naming the part and what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fails, ok, p};
use ramem_store::memory::{Memory, ValueKind};

const CLASSES: [&str; 3] = ["Dress", "Sandal", "Bag"];
/// Build settings shared by every build here: small batches and shards so
/// that the parts cut the input in several places.
const SETTINGS: [&str; 8] = [
    "--values",
    "both",
    "--batch",
    "4",
    "--shard-rows",
    "10",
    "--split",
    "train",
];

/// The data (13 training images per class, captioned) and its spec.
fn data(dir: &Path) -> String {
    let idx = ramem_assets::Cache::from_env()
        .and_then(|cache| cache.fashion_mnist_dir())
        .expect("fashion-mnist is installed (scripts/setup.sh --test)");
    let data = dir.join("data");
    ramem_study::fixtures::write_fashion_folders(&idx, &data, &CLASSES, 13, 1).unwrap();
    format!("folders:{}", data.display())
}

fn build(memory: &Path, spec: &str, extra: &[&str]) {
    let mut args = vec!["memory", "build", "--memory", p(memory), "--input", spec];
    args.extend(SETTINGS);
    args.extend(extra);
    ok(&args);
}

/// Every row of `a` and `b` is the same: keys, values, metadata, label.
fn assert_same_rows(a: &Path, b: &Path) {
    let (a, b) = (Memory::open(a).unwrap(), Memory::open(b).unwrap());
    assert_eq!(a.count(), b.count());
    assert_eq!(a.label_names(), b.label_names());
    for id in 0..a.count() as i64 {
        let (ma, mb) = (a.metadata(id).unwrap(), b.metadata(id).unwrap());
        assert_eq!(ma, mb, "row {id}");
        assert_eq!(a.label(id).unwrap(), b.label(id).unwrap(), "row {id}");
        let what = format!("row {id} ({:?})", ma.source);
        assert!(
            a.key(id).unwrap() == b.key(id).unwrap(),
            "{what}: keys differ"
        );
        for kind in [ValueKind::Image, ValueKind::Text] {
            assert!(
                a.values(kind, id).unwrap() == b.values(kind, id).unwrap(),
                "{what}: {} values differ",
                kind.name()
            );
        }
    }
}

#[test]
fn parts_built_by_three_processes_merge_into_the_single_build() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = data(tmp.path());
    let single = tmp.path().join("single");
    build(&single, &spec, &[]);
    assert_eq!(Memory::open(&single).unwrap().count(), 39);

    // Three processes at once, each one part.
    let parts: Vec<PathBuf> = (0..3)
        .map(|i| tmp.path().join(format!("part-{i}")))
        .collect();
    let children: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            Command::new(env!("CARGO_BIN_EXE_ramem"))
                .args(["memory", "build", "--memory", p(part), "--input", &spec])
                .args(SETTINGS)
                .args(["--shard", &format!("{i}/3"), "--threads", "1"])
                .output()
                .unwrap()
        })
        .collect();
    for out in children {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Whole batches of 4, dealt out in order: 10 batches as 3 + 3 + 4.
    let sizes: Vec<u64> = parts
        .iter()
        .map(|part| Memory::open(part).unwrap().count())
        .collect();
    assert_eq!(sizes, [12, 12, 15]);

    // Merged in any order given: the single build's rows.
    let merged = tmp.path().join("merged");
    let (_, err) = ok(&[
        "memory",
        "merge",
        "--out",
        p(&merged),
        p(&parts[2]),
        p(&parts[0]),
        p(&parts[1]),
    ]);
    assert!(err.contains("39 rows from 3 parts"), "{err}");
    assert_same_rows(&single, &merged);
    // A rerun changes nothing; a build of the whole input finds it done.
    ok(&[
        "memory",
        "merge",
        "--out",
        p(&merged),
        p(&parts[0]),
        p(&parts[1]),
        p(&parts[2]),
    ]);
    let mut args = vec!["memory", "build", "--memory", p(&merged), "--input", &spec];
    args.extend(SETTINGS);
    let (_, err) = ok(&args);
    assert!(err.contains("resuming: 39 of 39 items"), "{err}");
    assert_same_rows(&single, &merged);

    // Parts that do not belong together.
    let out = |name: &str| tmp.path().join(name);
    let err = fails(&[
        "memory",
        "merge",
        "--out",
        p(&out("m1")),
        p(&parts[0]),
        p(&parts[1]),
    ]);
    assert!(err.contains("part 2/3 is missing"), "{err}");
    let err = fails(&[
        "memory",
        "merge",
        "--out",
        p(&out("m2")),
        p(&parts[0]),
        p(&parts[1]),
        p(&parts[1]),
        p(&parts[2]),
    ]);
    assert!(err.contains("part 1/3 is given twice"), "{err}");
    let err = fails(&["memory", "merge", "--out", p(&out("m3")), p(&single)]);
    assert!(err.contains("not as a part"), "{err}");
    let images_only = out("images-only");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&images_only),
        "--input",
        &spec,
        "--split",
        "train",
        "--batch",
        "4",
        "--shard",
        "1/3",
    ]);
    let err = fails(&[
        "memory",
        "merge",
        "--out",
        p(&out("m4")),
        p(&parts[0]),
        p(&images_only),
        p(&parts[2]),
    ]);
    assert!(
        err.contains("values") && err.contains("has both") && err.contains("has image"),
        "{err}"
    );
    let err = fails(&[
        "memory",
        "build",
        "--memory",
        p(&out("m5")),
        "--input",
        &spec,
        "--shard",
        "3/3",
    ]);
    assert!(err.contains("I from 0 to N - 1"), "{err}");
    for name in ["m1", "m2", "m3", "m4", "m5"] {
        assert!(!out(name).exists(), "{name} was written");
    }
}

#[test]
fn parts_built_as_ray_tasks_merge_into_the_single_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join("target/test-venv/bin/python");
    assert!(
        python.exists(),
        "the test venv with Ray is missing at {}: run scripts/setup.sh --test",
        python.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let spec = data(tmp.path());
    let single = tmp.path().join("single");
    build(&single, &spec, &[]);
    let merged = tmp.path().join("merged");
    let mut args = vec![
        p(&root.join("examples/ray_build_memory.py")).to_string(),
        "--parts".into(),
        "3".into(),
        "--memory".into(),
        p(&merged).to_string(),
        "--ramem-bin".into(),
        env!("CARGO_BIN_EXE_ramem").into(),
        "--".into(),
        "--input".into(),
        spec.clone(),
    ];
    args.extend(SETTINGS.iter().map(|s| s.to_string()));
    let out = Command::new(&python)
        .args(&args)
        // A cluster of this test's own, on loopback, stopped at the end.
        .env_remove("RAY_ADDRESS")
        .env("RAY_AUTH_MODE", "disabled")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the Ray build failed:\n{log}");
    assert!(log.contains("merged 3 parts"), "{log}");
    assert_same_rows(&single, &merged);
}
