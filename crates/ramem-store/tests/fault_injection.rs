//! Fault injection of the memory writer, run by hand (ignored in CI; the
//! figures are in docs/FORMAT.md):
//!
//! ```sh
//! cargo test -p ramem-store --release --test fault_injection -- --ignored --nocapture
//! ```
//!
//! An import runs in a child process (this test binary, selected by name)
//! and is killed (SIGKILL) after a random delay, again and again, each
//! child resuming what the last one left, until one finishes. After every
//! kill the memory must open and verify, hold only whole committed shards,
//! and its committed rows must be exactly the first rows of the input (no
//! row lost, none twice). The finished memory must equal, file for file,
//! an import that was never interrupted. Each kill is classified by what
//! it left behind: inside a shard's temporary directory, between a
//! shard's rename and its manifest commit, inside the manifest write, or
//! between two shards.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ramem_store::memory::{import_npy, ImportOptions, Manifest, Memory, LOCK_FILE};
use ramem_store::npy;

const CHILD_ENV: &str = "RAMEM_FAULT_INJECTION_CHILD";
const ROWS: usize = 60_000;
const DIM: usize = 64;
const SHARD_ROWS: usize = 25;
/// Kills to land before an import is let finish (at least 20 must land).
const KILLS: usize = 200;

fn import(work: &Path, mem: &Path) -> ramem_store::Result<()> {
    import_npy(
        mem,
        &work.join("keys.npy"),
        Some(&work.join("image.npy")),
        None,
        Some(&work.join("meta.jsonl")),
        &ImportOptions {
            key_encoder: "fault-injection".into(),
            image_encoder: "fault-injection".into(),
            ..ImportOptions::default()
        },
        SHARD_ROWS,
    )
    .map(|_| ())
}

/// Not a test on its own: the child's body.
#[test]
fn fault_injection_child() {
    if let Ok(work) = std::env::var(CHILD_ENV) {
        let work = PathBuf::from(work);
        import(&work, &work.join("mem")).unwrap();
    }
}

/// Every file under `dir` but the writer lock (which records the holder's
/// pid), with its bytes, sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.file_name().is_some_and(|n| n != LOCK_FILE) {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Where a kill landed, from what it left in the memory directory.
fn kill_point(mem: &Path, manifest: &Manifest) -> &'static str {
    let names: Vec<String> = fs::read_dir(mem)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if names.iter().any(|n| n.starts_with(".tmp-shard-")) {
        "inside a shard's temporary directory"
    } else if names
        .iter()
        .any(|n| n.starts_with("shard-") && !manifest.shards.iter().any(|s| &s.name == n))
    {
        "between a shard's rename and its manifest commit"
    } else if names
        .iter()
        .any(|n| n.starts_with(".manifest.json.") || n.starts_with(".import-state.json."))
    {
        "inside a manifest or import-record write"
    } else if manifest.count == 0 && manifest.shards.is_empty() {
        "before the first shard"
    } else {
        "between two shards"
    }
}

#[test]
#[ignore = "fault injection: tens of killed child processes, run by hand with --ignored --nocapture"]
fn a_writer_killed_anywhere_loses_no_committed_row_and_resumes_to_the_same_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let keys: Vec<f32> = (0..ROWS * DIM)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    npy::write_f32_matrix(work.join("keys.npy"), ROWS, DIM, &keys).unwrap();
    npy::write_f16_matrix(work.join("image.npy"), ROWS, 8, &keys[..ROWS * 8]).unwrap();
    let meta: String = (0..ROWS)
        .map(|i| format!("{{\"source\": \"img{i}.jpg\", \"caption\": \"row {i}\"}}\n"))
        .collect();
    fs::write(work.join("meta.jsonl"), meta).unwrap();
    let reference = work.join("reference");
    import(work, &reference).unwrap();
    let want = Memory::open(&reference).unwrap();

    let mem = work.join("mem");
    let mut kills = 0usize;
    let mut points: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    loop {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fault_injection_child", "--test-threads=1"])
            .env(CHILD_ENV, work)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let the child write for a random while (a few shards at most),
        // then kill it; once enough kills have landed, let it finish.
        let delay = Duration::from_micros(5_000 + next() % 20_000);
        let t = Instant::now();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "the child import failed: {status}");
                break true;
            }
            if kills < KILLS && t.elapsed() >= delay {
                child.kill().unwrap();
                child.wait().unwrap();
                break false;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        if finished {
            break;
        }
        // Verify what the kill left: it opens, holds whole shards, and its
        // rows are exactly the input's first rows.
        let Ok(manifest) = Manifest::read(&mem) else {
            // Killed before the memory's manifest existed.
            *points.entry("before the memory existed").or_default() += 1;
            kills += 1;
            continue;
        };
        *points.entry(kill_point(&mem, &manifest)).or_default() += 1;
        kills += 1;
        let memory = Memory::open(&mem).unwrap();
        let count = memory.count();
        assert_eq!(
            count % SHARD_ROWS as u64,
            0,
            "kill {kills}: a partial shard was committed"
        );
        assert!(
            count as usize <= ROWS,
            "kill {kills}: more rows than the input"
        );
        for id in 0..count as i64 {
            assert_eq!(
                memory.key(id).unwrap(),
                want.key(id).unwrap(),
                "kill {kills}: row {id}"
            );
            assert_eq!(memory.metadata(id).unwrap(), want.metadata(id).unwrap());
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no progress");
    }
    assert!(kills >= 20, "only {kills} kills landed");
    assert_eq!(Memory::open(&mem).unwrap().count(), ROWS as u64);
    assert!(
        tree(&mem) == tree(&reference),
        "the resumed memory differs from an uninterrupted import"
    );
    eprintln!(
        "{kills} kills survived ({ROWS} rows in shards of {SHARD_ROWS}), then one child finished; \
         the memory equals an uninterrupted import. Kill points:"
    );
    for (point, n) in &points {
        eprintln!("  {n:>3} {point}");
    }
}
