//! The memory on a Milvus collection (`--features milvus`), against a real
//! Milvus-protocol server: `milvus-lite` from PyPI, installed by
//! `scripts/setup.sh --test` into `target/test-venv` (or the one named by
//! `RAMEM_MILVUS_LITE`). Tests that leave the server running use the one
//! `.ci/run` started (`RAMEM_TEST_MILVUS=HOST:PORT`) where there is one;
//! the others start and kill their own.
//!
//! A memory of real Fashion-MNIST images (EfficientNet-Lite0 keys, image
//! and MiniLM caption values) is pushed with a FLAT and with an HNSW index:
//! `ramem search` through each finds the embedded exact search's
//! neighbours, a module trained and evaluated through the collection
//! scores as the embedded run does, and `predict`, `study` and `serve`
//! read it. A push survives its server being killed mid-way; a server that
//! is not there, one that never answers, and a collection of other keys
//! each end in a clear error in bounded time.
#![cfg(feature = "milvus")]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::http::{multipart, post, Server};
use common::{fails, ok, p};
use ramem_store::memory::{Memory, ValueKind};

/// Classes of the fixture, with training and test images per class.
const CLASSES: [&str; 6] = [
    "T-shirt/top",
    "Trouser",
    "Dress",
    "Sneaker",
    "Bag",
    "Sandal",
];
const TRAIN_PER_CLASS: usize = 80;
const TEST_PER_CLASS: usize = 15;

/// A milvus-lite server on a loopback port, killed when dropped.
struct MilvusServer {
    child: Option<Child>,
    data: PathBuf,
    /// `127.0.0.1:PORT`.
    address: String,
}

fn milvus_lite() -> PathBuf {
    if let Some(path) = std::env::var_os("RAMEM_MILVUS_LITE") {
        return path.into();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin/milvus-lite");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup.sh --test",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl MilvusServer {
    /// A server of its own, on a free port, keeping its data in `data`.
    fn start(data: &Path) -> MilvusServer {
        MilvusServer::start_on(data, &format!("127.0.0.1:{}", free_port()))
    }

    /// A server at `address` (`127.0.0.1:PORT`) over `data`, waited for
    /// until it accepts connections.
    fn start_on(data: &Path, address: &str) -> MilvusServer {
        std::fs::create_dir_all(data).unwrap();
        let port = address.rsplit(':').next().unwrap();
        let log = std::fs::File::create(data.with_extension("log")).unwrap();
        let child = Command::new(milvus_lite())
            .args(["server", "--data-dir", p(data)])
            .args(["--host", "127.0.0.1", "--port", port])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start milvus-lite");
        let started = Instant::now();
        while TcpStream::connect(address).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "milvus-lite did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        MilvusServer {
            child: Some(child),
            data: data.to_path_buf(),
            address: address.to_string(),
        }
    }

    /// The server `.ci/run` started, or one of our own over `data`.
    fn shared_or_own(data: &Path) -> MilvusServer {
        match std::env::var("RAMEM_TEST_MILVUS") {
            Ok(address) if !address.is_empty() => MilvusServer {
                child: None,
                data: data.to_path_buf(),
                address,
            },
            _ => MilvusServer::start(data),
        }
    }

    /// The collection `name` on this server, unique to this test process.
    fn url(&self, name: &str) -> String {
        format!("milvus://{}/{name}_{}", self.address, std::process::id())
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the server again on the same port and data.
    fn restart(&mut self) {
        self.kill();
        let again = MilvusServer::start_on(&self.data, &self.address);
        *self = again;
    }
}

impl Drop for MilvusServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `ramem ARGS` with environment `env`.
fn ramem_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ramem"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ramem");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "ramem panicked:\n{err}");
    out
}

/// The data, a memory directory of its training images and a study file,
/// made once for every test of this binary.
struct Fixture {
    data: String,
    test_dir: PathBuf,
    memory: PathBuf,
    options: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("milvus-fixture");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (spec, memory) =
            common::fashion_memory(&dir, &CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS);
        let data = dir.join("data");
        let options = dir.join("options.toml");
        let text = ramem_study::fixtures::tiny_study("-", &dir.join("cache"), "", "")
            .replace("epochs = 3", "epochs = 4");
        std::fs::write(&options, text).unwrap();
        Fixture {
            data: spec,
            test_dir: data.join("test"),
            memory,
            options,
        }
    })
}

/// The memory's keys as a query file: query i is entry i.
fn keys_as_queries(memory: &Path, out: &Path) -> usize {
    let memory = Memory::open(memory).unwrap();
    let n = memory.count() as usize;
    let dim = memory.key_dim();
    let mut keys = Vec::with_capacity(n * dim);
    for id in 0..n as i64 {
        keys.extend(memory.key(id).unwrap());
    }
    ramem_store::npy::write_f32_matrix(out, n, dim, &keys).unwrap();
    n
}

/// The share of the exact lists' neighbours that `found` holds too.
fn recall(exact: &[i64], found: &[i64], k: usize) -> f64 {
    let mut hits = 0;
    for (e, f) in exact.chunks(k).zip(found.chunks(k)) {
        hits += e.iter().filter(|id| f.contains(id)).count();
    }
    hits as f64 / exact.len() as f64
}

fn search(memory: &str, queries: &Path, out: &Path, extra: &[&str]) -> Vec<i64> {
    let mut args = vec![
        "search",
        "--memory",
        memory,
        "--queries",
        p(queries),
        "--k",
        "10",
        "--exclude-self",
        "--out",
        p(out),
    ];
    args.extend(extra);
    ok(&args);
    ramem_store::npy::read_i64_matrix(out).unwrap().data
}

fn push(memory: &Path, url: &str, extra: &[&str]) -> String {
    let mut args = vec!["memory", "push", "--memory", p(memory), "--to", url];
    args.extend(extra);
    ok(&args).1
}

#[test]
fn a_pushed_memory_is_searched_as_the_embedded_one_and_pulled_back() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let server = MilvusServer::shared_or_own(&tmp.path().join("milvus"));
    let (flat, hnsw) = (server.url("search_flat"), server.url("search_hnsw"));
    let err = push(&fx.memory, &flat, &["--batch", "100"]);
    assert!(
        err.contains("480 entries written, 0 already there"),
        "{err}"
    );
    push(
        &fx.memory,
        &hnsw,
        &["--index", "hnsw", "--index-params", "M=8,efConstruction=64"],
    );

    // A rerun writes nothing: every row is there already.
    let err = push(&fx.memory, &flat, &[]);
    assert!(
        err.contains(" 0 entries written, 480 already there"),
        "{err}"
    );

    let (info, _) = ok(&["memory", "info", "--memory", &hnsw]);
    assert!(info.contains("entries:  480"), "{info}");
    assert!(info.contains("HNSW"), "{info}");
    assert!(info.contains("efficientnet-lite0"), "{info}");
    assert!(info.contains("minilm-l6"), "{info}");

    let queries = tmp.path().join("queries.npy");
    let n = keys_as_queries(&fx.memory, &queries);
    let exact = search(p(&fx.memory), &queries, &tmp.path().join("exact.npy"), &[]);
    let on_flat = search(&flat, &queries, &tmp.path().join("flat.npy"), &[]);
    let on_hnsw = search(
        &hnsw,
        &queries,
        &tmp.path().join("hnsw.npy"),
        &["--ef", "16"],
    );
    assert_eq!(exact.len(), n * 10);
    let (r_flat, r_hnsw) = (recall(&exact, &on_flat, 10), recall(&exact, &on_hnsw, 10));
    eprintln!("recall@10 against exact: FLAT {r_flat:.4}, HNSW {r_hnsw:.4}");
    assert!(r_flat >= 0.99, "FLAT recall@10 {r_flat}");
    assert!(r_hnsw >= 0.95, "HNSW recall@10 {r_hnsw}");
    // No list holds its own query.
    for (q, list) in on_flat.chunks(10).enumerate() {
        assert!(!list.contains(&(q as i64)), "query {q}: {list:?}");
    }

    // Pulled back, the memory has the same rows.
    let pulled = tmp.path().join("pulled");
    ok(&["memory", "pull", "--from", &flat, "--memory", p(&pulled)]);
    let (a, b) = (
        Memory::open(&fx.memory).unwrap(),
        Memory::open(&pulled).unwrap(),
    );
    assert_eq!(a.count(), b.count());
    assert_eq!(a.label_names(), b.label_names());
    assert_eq!(a.manifest().key, b.manifest().key);
    for id in 0..a.count() as i64 {
        assert_eq!(a.metadata(id).unwrap(), b.metadata(id).unwrap(), "row {id}");
        assert_eq!(a.label(id).unwrap(), b.label(id).unwrap(), "row {id}");
        let (ka, kb) = (a.key(id).unwrap(), b.key(id).unwrap());
        let gap = ka
            .iter()
            .zip(&kb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-6, "row {id}: keys differ by {gap}");
        for kind in [ValueKind::Image, ValueKind::Text] {
            assert_eq!(
                a.values(kind, id).unwrap(),
                b.values(kind, id).unwrap(),
                "row {id}"
            );
        }
    }
    // Pulling into a directory that holds another memory is refused.
    let err = fails(&["memory", "pull", "--from", &flat, "--memory", p(&fx.memory)]);
    assert!(err.contains("pull into a new directory"), "{err}");
}

/// Top-1 of `ramem evaluate`'s report for `model`.
fn evaluate(model: &Path, out: &Path) -> f64 {
    let fx = fixture();
    ok(&[
        "evaluate",
        "--model",
        p(model),
        "--data",
        &fx.data,
        "--out",
        p(out),
        "--cache-dir",
        p(&out.with_extension("cache")),
    ]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    report["runs"][0]["top1"].as_f64().unwrap()
}

fn train(memory: &str, model: &Path) -> String {
    let fx = fixture();
    ok(&[
        "train",
        "--data",
        &fx.data,
        "--memory",
        memory,
        "--config",
        p(&fx.options),
        "--k",
        "4",
        "--out",
        p(model),
    ])
    .1
}

/// Each image's neighbour ids in `ramem predict --jsonl`'s output.
fn predicted_neighbours(model: &Path) -> Vec<(String, Vec<i64>)> {
    let (out, _) = ok(&[
        "predict",
        "--model",
        p(model),
        "--input",
        p(&fixture().test_dir),
        "--jsonl",
    ]);
    out.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["neighbours"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["memory_id"].as_i64().unwrap())
                .collect();
            (v["image"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

#[test]
fn a_module_trained_through_milvus_scores_as_the_embedded_one() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let server = MilvusServer::shared_or_own(&tmp.path().join("milvus"));
    let url = server.url("train_flat");
    push(&fx.memory, &url, &[]);

    let (here, there) = (tmp.path().join("embedded"), tmp.path().join("milvus-model"));
    let err_here = train(p(&fx.memory), &here);
    let err_there = train(&url, &there);
    // The collection knows the training images as the directory does.
    for err in [&err_here, &err_there] {
        assert!(
            err.contains("holds 480 of the 480 training images"),
            "{err}"
        );
    }
    let top1_here = evaluate(&here, &tmp.path().join("report-embedded"));
    let top1_there = evaluate(&there, &tmp.path().join("report-milvus"));
    eprintln!("top-1: embedded {top1_here:.2}, through Milvus {top1_there:.2}");
    assert!(top1_here > 50.0, "{top1_here}");
    assert!(
        (top1_here - top1_there).abs() <= 0.01,
        "embedded {top1_here} against Milvus {top1_there}"
    );
    // The bundle names the collection, and predictions read it.
    let bundle = std::fs::read_to_string(there.join("model.json")).unwrap();
    assert!(bundle.contains(&url), "{bundle}");
    let (a, b) = (predicted_neighbours(&here), predicted_neighbours(&there));
    assert_eq!(a.len(), CLASSES.len() * TEST_PER_CLASS);
    assert_eq!(a, b, "the same neighbours for every test image");

    // A study reads the collection as its memory, as it reads the directory.
    let study = |source: &str, name: &str| {
        let config = tmp.path().join(format!("{name}.toml"));
        let text = ramem_study::fixtures::tiny_study(
            &fx.data,
            &tmp.path().join("study-cache"),
            "methods = [\"mam\"]",
            &format!("\n[memory]\nsource = \"{source}\"\n"),
        );
        std::fs::write(&config, text).unwrap();
        let out = tmp.path().join(name);
        ok(&["study", "--config", p(&config), "--out", p(&out)]);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        let run = &report["runs"][0];
        assert_eq!(run["method"], "mam", "{report}");
        run["top1"].as_f64().unwrap()
    };
    let study_here = study(&format!("dir:{}", fx.memory.display()), "study-embedded");
    let study_there = study(&url, "study-milvus");
    assert!(
        (study_here - study_there).abs() <= 0.01,
        "study: embedded {study_here} against Milvus {study_there}"
    );
}

/// `ramem memory info` of `url`'s entries, while a push may be writing it.
fn entries(url: &str) -> Option<u64> {
    let out = ramem_env(
        &["memory", "info", "--memory", url],
        &[("RAMEM_MILVUS_TIMEOUT", "5")],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("entries:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[test]
fn a_push_killed_with_its_server_resumes_without_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    // A memory large enough that the push is caught mid-way.
    let (n, dim) = (30_000usize, 128usize);
    let keys = tmp.path().join("keys.npy");
    ramem_store::npy::write_f32_matrix(&keys, n, dim, &common::rows(n, dim, 7)).unwrap();
    let labels = tmp.path().join("labels.npy");
    let label_rows: Vec<i64> = (0..n as i64).map(|i| i % 5).collect();
    ramem_store::npy::write_i64_matrix(&labels, n, 1, &label_rows).unwrap();
    let memory = tmp.path().join("memory");
    ok(&[
        "memory",
        "import",
        "--memory",
        p(&memory),
        "--keys",
        p(&keys),
        "--labels",
        p(&labels),
    ]);

    let mut server = MilvusServer::start(&tmp.path().join("milvus"));
    let url = server.url("killed");
    let env = [("RAMEM_MILVUS_TIMEOUT", "3")];
    let pushing = Command::new(env!("CARGO_BIN_EXE_ramem"))
        .args([
            "memory",
            "push",
            "--memory",
            p(&memory),
            "--to",
            &url,
            "--batch",
            "500",
        ])
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let written = entries(&url).unwrap_or(0);
        if written > 0 {
            assert!(written < n as u64, "the push finished before the kill");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the push wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill();
    let killed_at = Instant::now();
    let out = pushing.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "the push gave up after {:?}",
        killed_at.elapsed()
    );
    assert!(
        err.contains(&server.address),
        "the error names the server: {err}"
    );
    assert!(err.contains("run the same command again"), "{err}");

    // Unfinished, the collection is refused as a memory.
    server.restart();
    let (info, _) = ok(&["memory", "info", "--memory", &url]);
    assert!(info.contains("a push into it has not finished"), "{info}");
    let queries = tmp.path().join("q.npy");
    ramem_store::npy::write_f32_matrix(&queries, 2, dim, &common::rows(2, dim, 9)).unwrap();
    let err = fails(&[
        "search",
        "--memory",
        &url,
        "--queries",
        p(&queries),
        "--k",
        "5",
        "--out",
        p(&tmp.path().join("ids.npy")),
    ]);
    assert!(err.contains("has not finished"), "{err}");

    // The rerun completes it; every id once.
    let err = push(&memory, &url, &["--batch", "2000"]);
    let already: u64 = err
        .split(" already there")
        .next()
        .and_then(|head| head.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(already > 0 && already < n as u64, "{err}");
    assert_eq!(entries(&url), Some(n as u64));
    let pulled = tmp.path().join("pulled");
    ok(&["memory", "pull", "--from", &url, "--memory", p(&pulled)]);
    let (pulled, original) = (
        Memory::open(&pulled).unwrap(),
        Memory::open(&memory).unwrap(),
    );
    assert_eq!(pulled.count(), n as u64);
    for id in (0..n as i64).step_by(997) {
        assert_eq!(pulled.label(id).unwrap(), original.label(id).unwrap());
        let gap = pulled
            .key(id)
            .unwrap()
            .iter()
            .zip(original.key(id).unwrap())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-6, "row {id}");
    }
}

#[test]
fn a_server_answers_503_while_its_memory_is_away_and_recovers() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let mut milvus = MilvusServer::start(&tmp.path().join("milvus"));
    let url = milvus.url("served");
    push(&fx.memory, &url, &[]);
    let model = tmp.path().join("model");
    train(&url, &model);
    let web = Server::start_with_env(&model, &[], &[("RAMEM_MILVUS_TIMEOUT", "2")]);
    let image = std::fs::read(fx.test_dir.join("Bag/00000.png")).unwrap();
    let (content_type, body) = multipart("image", "bag.png", &image);
    let classify = || post(&web.addr, "/v1/classify", &content_type, &body);
    let answer = classify();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["neighbours"].as_array().unwrap().len(), 4);

    milvus.kill();
    let asked = Instant::now();
    let answer = classify();
    assert_eq!(answer.status, 503, "{}", answer.text());
    let why = answer.json()["error"].to_string();
    assert!(why.contains(&milvus.address), "names the server: {why}");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "answered after {:?}",
        asked.elapsed()
    );
    // The server is still up, and answers again once its memory is back.
    milvus.restart();
    let answer = classify();
    assert_eq!(answer.status, 200, "{}\n{}", answer.text(), web.log());
}

/// `ramem search` of `url` with a short timeout: its error and how long
/// it took.
fn search_fails_within(url: &str, dir: &Path) -> (String, Duration) {
    let queries = dir.join("q.npy");
    ramem_store::npy::write_f32_matrix(&queries, 1, 4, &[0.5; 4]).unwrap();
    let started = Instant::now();
    let out = ramem_env(
        &[
            "search",
            "--memory",
            url,
            "--queries",
            p(&queries),
            "--k",
            "1",
            "--out",
            p(&dir.join("ids.npy")),
        ],
        &[("RAMEM_MILVUS_TIMEOUT", "2")],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    (err, started.elapsed())
}

#[test]
fn a_server_that_is_not_there_or_never_answers_is_an_error_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens.
    let address = format!("127.0.0.1:{}", free_port());
    let (err, took) = search_fails_within(&format!("milvus://{address}/memory"), tmp.path());
    assert!(err.contains(&address), "{err}");
    assert!(
        err.contains("cannot be reached") || err.contains("unavailable"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");

    // A listener that takes connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(16).flatten() {
            open.push(stream);
        }
    });
    let (err, took) = search_fails_within(&format!("milvus://{address}/memory"), tmp.path());
    assert!(err.contains(&address), "{err}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    drop(held);

    // Addresses that cannot be a collection.
    for (bad, why) in [
        ("milvus://127.0.0.1:1", "no collection"),
        ("milvus://127.0.0.1:1/my-memory", "letters, digits"),
    ] {
        let (err, _) = search_fails_within(bad, tmp.path());
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn a_collection_of_other_keys_is_refused_naming_both() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let server = MilvusServer::shared_or_own(&tmp.path().join("milvus"));
    let url = server.url("other_keys");
    push(&fx.memory, &url, &[]);

    // 64-d keys from another encoder into the 1280-d collection.
    let (n, dim) = (20usize, 64usize);
    let keys = tmp.path().join("keys.npy");
    ramem_store::npy::write_f32_matrix(&keys, n, dim, &common::rows(n, dim, 3)).unwrap();
    let other = tmp.path().join("other");
    ok(&[
        "memory",
        "import",
        "--memory",
        p(&other),
        "--keys",
        p(&keys),
        "--key-encoder",
        "clip-vit-b32",
    ]);
    let err = fails(&["memory", "push", "--memory", p(&other), "--to", &url]);
    for both in ["efficientnet-lite0", "clip-vit-b32", "1280", "64"] {
        assert!(err.contains(both), "names {both}: {err}");
    }
    // The collection is left as it was.
    let (info, _) = ok(&["memory", "info", "--memory", &url]);
    assert!(info.contains("entries:  480"), "{info}");
    assert!(!info.contains("has not finished"), "{info}");

    // Queries of another dimension are refused too.
    let (err, _) = search_fails_within(&url, tmp.path());
    assert!(err.contains("1280") && err.contains('4'), "{err}");
    // A push with an index the collection does not have is refused.
    let err = fails(&[
        "memory",
        "push",
        "--memory",
        p(&fx.memory),
        "--to",
        &url,
        "--index",
        "hnsw",
    ]);
    assert!(err.contains("FLAT") && err.contains("HNSW"), "{err}");
}
