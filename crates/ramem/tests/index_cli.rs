//! `ramem index build|eval|info` and `ramem search --engine hnsw` end to end:
//! recall against exact search, the saved index, damaged and stale indexes.

mod common;

use std::path::{Path, PathBuf};

use common::{p, ramem, rows, unit};
use ramem_store::npy::{read_i64_matrix, write_f32_matrix};

const DIM: usize = 32;

/// `n` keys around 40 centres (each a unit vector), plus 100 queries from
/// the same law.
fn clustered(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let centres: Vec<Vec<f32>> = rows(40, DIM, seed).chunks(DIM).map(unit).collect();
    let noise = rows(n + 100, DIM, seed + 1);
    let mut all = Vec::with_capacity((n + 100) * DIM);
    for (i, e) in noise.chunks(DIM).enumerate() {
        let c = &centres[(i * 17) % 40];
        let v: Vec<f32> = c.iter().zip(e).map(|(c, e)| c + 0.6 * e).collect();
        all.extend(unit(&v));
    }
    let queries = all.split_off(n * DIM);
    (all, queries)
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    mem: PathBuf,
    keys: PathBuf,
    queries: PathBuf,
}

fn setup(n: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (keys, queries) = clustered(n, 5);
    let (kp, qp, mem) = (root.join("keys.npy"), root.join("q.npy"), root.join("mem"));
    write_f32_matrix(&kp, n, DIM, &keys).unwrap();
    write_f32_matrix(&qp, 100, DIM, &queries).unwrap();
    ok(&[
        "memory",
        "import",
        "--memory",
        p(&mem),
        "--keys",
        p(&kp),
        "--shard-rows",
        "1500",
    ]);
    Setup {
        _dir: dir,
        root,
        mem,
        keys: kp,
        queries: qp,
    }
}

fn ok(args: &[&str]) -> String {
    let out = ramem(args);
    assert!(
        out.status.success(),
        "ramem {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = ramem(args);
    assert!(!out.status.success(), "ramem {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn search(s: &Setup, out: &Path, extra: &[&str]) -> Vec<i64> {
    let mut args = vec![
        "search",
        "--memory",
        p(&s.mem),
        "--queries",
        p(&s.queries),
        "--k",
        "10",
        "--out",
        p(out),
    ];
    args.extend_from_slice(extra);
    ok(&args);
    read_i64_matrix(out).unwrap().data
}

fn recall(got: &[i64], want: &[i64]) -> f64 {
    let hits: usize = got
        .chunks(10)
        .zip(want.chunks(10))
        .map(|(g, w)| g.iter().filter(|id| w.contains(id)).count())
        .sum();
    hits as f64 / want.len() as f64
}

#[test]
fn build_eval_search_info() {
    let s = setup(4000);
    let mem = p(&s.mem);
    let no_index = fails(&[
        "search",
        "--memory",
        mem,
        "--queries",
        p(&s.queries),
        "--k",
        "5",
        "--out",
        p(&s.root.join("x.npy")),
        "--engine",
        "hnsw",
    ]);
    assert!(
        no_index.contains("ramem index build") && no_index.contains("header.json"),
        "{no_index}"
    );
    assert!(fails(&["index", "info", "--memory", mem]).contains("no HNSW index"));

    ok(&[
        "--threads",
        "2",
        "index",
        "build",
        "--memory",
        mem,
        "--m",
        "12",
        "--seed",
        "3",
    ]);
    let info = ok(&["index", "info", "--memory", mem]);
    assert!(
        info.contains("entries:      4000") && info.contains("m:            12"),
        "{info}"
    );

    let json = s.root.join("eval.json");
    let table = ok(&[
        "index",
        "eval",
        "--memory",
        mem,
        "--queries",
        p(&s.queries),
        "--k",
        "10",
        "--ef",
        "8,64",
        "--json",
        p(&json),
    ]);
    assert!(
        table.contains("recall@k") && table.contains("exact"),
        "{table}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let curve = v["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 2);
    assert_eq!(curve[1]["ef"], 64);
    let r64 = curve[1]["recall"].as_f64().unwrap();
    assert!(r64 >= 0.95, "recall@10 at ef 64: {r64}");
    assert!(curve[0]["recall"].as_f64().unwrap() <= r64 + 1e-9);
    assert_eq!(v["index"]["m"], 12);

    // search --engine hnsw against the default exact engine.
    let exact = search(&s, &s.root.join("exact.npy"), &[]);
    let approx = search(
        &s,
        &s.root.join("hnsw.npy"),
        &["--engine", "hnsw", "--ef", "64"],
    );
    assert!(recall(&approx, &exact) >= 0.95);
    let wide = search(
        &s,
        &s.root.join("hnsw2.npy"),
        &["--engine", "hnsw", "--ef", "4000"],
    );
    assert!(
        recall(&wide, &exact) >= 0.999,
        "a beam as wide as the memory is exhaustive"
    );

    // The queries as memory rows, their own entries excluded.
    let own = s.root.join("own.npy");
    let keys = ramem_store::npy::read_f32_matrix(&s.keys).unwrap();
    write_f32_matrix(&own, 50, DIM, &keys.data[..50 * DIM]).unwrap();
    let excl = s.root.join("excl.npy");
    ok(&[
        "search",
        "--memory",
        mem,
        "--queries",
        p(&own),
        "--k",
        "3",
        "--out",
        p(&excl),
        "--engine",
        "hnsw",
        "--exclude-self",
    ]);
    let ids = read_i64_matrix(&excl).unwrap().data;
    for (qi, row) in ids.chunks(3).enumerate() {
        assert!(
            !row.contains(&(qi as i64)) && row.iter().all(|&id| id >= 0),
            "{qi}: {row:?}"
        );
    }
    ok(&[
        "search",
        "--memory",
        mem,
        "--queries",
        p(&own),
        "--k",
        "3",
        "--out",
        p(&excl),
        "--engine",
        "hnsw",
    ]);
    let ids = read_i64_matrix(&excl).unwrap().data;
    assert!(ids
        .chunks(3)
        .enumerate()
        .all(|(qi, row)| row[0] == qi as i64));

    // Bad arguments.
    for (args, want) in [
        (
            vec!["index", "build", "--memory", mem, "--m", "1"],
            "--m must be at least 2",
        ),
        (
            vec![
                "index",
                "eval",
                "--memory",
                mem,
                "--queries",
                p(&s.queries),
                "--ef",
                "0",
            ],
            "--ef",
        ),
        (
            vec![
                "index",
                "eval",
                "--memory",
                mem,
                "--queries",
                p(&s.queries),
                "--k",
                "0",
            ],
            "--k",
        ),
        (
            vec![
                "index",
                "eval",
                "--memory",
                mem,
                "--queries",
                p(&s.queries),
                "--k",
                "4001",
            ],
            "larger than the memory",
        ),
        (
            vec![
                "search",
                "--memory",
                mem,
                "--queries",
                p(&s.queries),
                "--k",
                "2",
                "--out",
                p(&excl),
                "--engine",
                "hnsw",
                "--ef",
                "0",
            ],
            "--ef must be at least 1",
        ),
    ] {
        let err = fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn damaged_and_stale_indexes_are_clear_errors() {
    let s = setup(1500);
    let mem = p(&s.mem);
    ok(&["index", "build", "--memory", mem]);
    let links = s.mem.join("index-hnsw").join("links.bin");
    let header = s.mem.join("index-hnsw").join("header.json");
    let good = std::fs::read(&links).unwrap();
    let out = s.root.join("o.npy");
    let hnsw_search = [
        "search",
        "--memory",
        mem,
        "--queries",
        p(&s.queries),
        "--k",
        "5",
        "--out",
        p(&out),
        "--engine",
        "hnsw",
    ];
    let eval = ["index", "eval", "--memory", mem, "--queries", p(&s.queries)];
    let info = ["index", "info", "--memory", mem];

    std::fs::write(&links, &good[..good.len() - 100]).unwrap();
    for args in [&hnsw_search[..], &eval[..], &info[..]] {
        let err = fails(args);
        assert!(
            err.contains(p(&links)) && err.contains("truncated"),
            "{args:?}: {err}"
        );
    }
    std::fs::write(&links, &good).unwrap();
    let text = std::fs::read(&header).unwrap();
    std::fs::write(&header, &text[..text.len() / 3]).unwrap();
    let err = fails(&hnsw_search);
    assert!(err.contains(p(&header)), "{err}");
    std::fs::write(&header, &text).unwrap();
    ok(&hnsw_search);

    // The memory grows (300 more rows appended from another file): the
    // index is stale until rebuilt, and exact search is unaffected.
    let (more, _) = clustered(1800, 5);
    let more_keys = s.root.join("more.npy");
    write_f32_matrix(&more_keys, 300, DIM, &more[1500 * DIM..]).unwrap();
    ok(&[
        "memory",
        "import",
        "--memory",
        mem,
        "--keys",
        p(&more_keys),
        "--shard-rows",
        "1500",
        "--append",
    ]);
    let err = fails(&hnsw_search);
    assert!(
        err.contains("stale")
            && err.contains("1500")
            && err.contains("1800")
            && err.contains("ramem index build")
            && err.contains(p(&header)),
        "{err}"
    );
    assert!(fails(&info).contains("stale"));
    ok(&hnsw_search[..9]);
    ok(&["index", "build", "--memory", mem]);
    ok(&hnsw_search);
    assert!(ok(&info).contains("entries:      1800"));
}

#[test]
fn int8_keys_build_eval_search_info() {
    let s = setup(3000);
    let mem = p(&s.mem);
    let missing = fails(&["index", "info", "--memory", mem, "--kind", "int8"]);
    assert!(missing.contains("no quantised keys"), "{missing}");
    let err = fails(&[
        "index", "build", "--memory", mem, "--kind", "int8", "--m", "8",
    ]);
    assert!(err.contains("--kind hnsw"), "{err}");
    ok(&["index", "build", "--memory", mem, "--kind", "int8"]);
    let info = ok(&["index", "info", "--memory", mem, "--kind", "int8"]);
    assert!(
        info.contains("entries:      3000") && info.contains("40 bytes per entry: 32 of codes"),
        "{info}"
    );
    // The HNSW index is separate, and still missing.
    assert!(fails(&["index", "info", "--memory", mem]).contains("no HNSW index"));

    let json = s.root.join("eval.json");
    let table = ok(&[
        "index",
        "eval",
        "--memory",
        mem,
        "--kind",
        "int8",
        "--queries",
        p(&s.queries),
        "--ef",
        "10,40",
        "--json",
        p(&json),
    ]);
    assert!(
        table.contains("rescored") && table.contains("exact"),
        "{table}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["engine"], "int8");
    assert_eq!(v["index"]["count"], 3000);
    let r40 = v["curve"][1]["recall"].as_f64().unwrap();
    assert!(r40 >= 0.99, "recall@10 with 40 re-scored: {r40}");

    let exact = search(&s, &s.root.join("exact.npy"), &[]);
    let int8 = search(&s, &s.root.join("int8.npy"), &["--engine", "int8"]);
    assert!(recall(&int8, &exact) >= 0.99);
    let all = search(
        &s,
        &s.root.join("all.npy"),
        &["--engine", "int8", "--ef", "3000"],
    );
    assert_eq!(all, exact, "re-scoring every entry is exact search");
}
