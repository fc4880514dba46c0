//! `ramem serve` end to end: a bundle trained here on real Fashion-MNIST
//! images (EfficientNet-Lite0 keys, MiniLM caption values) served on a free
//! loopback port. The same JSON as `ramem predict` for the same image;
//! searches by image and text; entries and thumbnails; a memory that grows
//! while the server runs; the documented 4xx for every bad input, the
//! server answering afterwards; a full queue answering 503; SIGTERM
//! draining the requests in flight; a bounded load with no error; the
//! metrics; and the page in a real browser and the OpenAPI schema under
//! generated requests, through their own checkers (Chromium through
//! playwright-core, schemathesis), which `scripts/setup.sh --test`
//! installs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::http::{get, multipart, post, request, Server};
use common::p;
use serde_json::Value;

const CLASSES: [&str; 3] = ["Trouser", "Sneaker", "Bag"];

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    model: PathBuf,
}

/// Runs `ramem`, which must succeed: its stdout.
fn ok(args: &[&str]) -> String {
    common::ok(args).0
}

/// The data, the memory and the trained bundle, made once per test binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let (spec, memory) = common::fashion_memory(&root, &CLASSES, 16, 4);
        let config = root.join("options.toml");
        let cache = root.join("cache");
        std::fs::write(
            &config,
            ramem_study::fixtures::tiny_study("-", &cache, "", ""),
        )
        .unwrap();
        let model = root.join("model");
        ok(&[
            "train",
            "--data",
            &spec,
            "--memory",
            p(&memory),
            "--config",
            p(&config),
            "--k",
            "4",
            "--out",
            p(&model),
        ]);
        Fixture {
            _dir: dir,
            root,
            data,
            model,
        }
    })
}

fn test_image(class: &str, i: usize) -> PathBuf {
    fixture()
        .data
        .join("test")
        .join(class)
        .join(format!("{i:05}.png"))
}

fn classify_file(addr: &str, query: &str, path: &Path) -> common::http::Response {
    let bytes = std::fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let (content_type, body) = multipart("image", name, &bytes);
    post(addr, &format!("/v1/classify{query}"), &content_type, &body)
}

/// The attention over the query and the neighbours sums to one.
fn assert_attention_sums_to_one(decision: &Value) {
    let query = decision["query_attention"].as_f64().unwrap_or(0.0);
    let neighbours: f64 = decision["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            // The fixture's module does not vote.
            assert!(n["vote"].is_null(), "{n}");
            n["attention"].as_f64().unwrap()
        })
        .sum();
    assert!(
        (query + neighbours - 1.0).abs() < 1e-4,
        "attention sums to {}: {decision}",
        query + neighbours
    );
}

#[test]
fn the_server_answers_as_predict_does_and_searches_the_memory() {
    let f = fixture();
    let server = Server::start(&f.model, &[]);
    let addr = server.addr.as_str();
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/readyz").json()["status"], "ready");

    // The same JSON as `ramem predict --jsonl` for the same image.
    let image = test_image("Sneaker", 0);
    let predicted: Value = serde_json::from_str(
        ok(&[
            "predict",
            "--model",
            p(&f.model),
            "--input",
            p(&image),
            "--jsonl",
        ])
        .lines()
        .next()
        .unwrap(),
    )
    .unwrap();
    let served = classify_file(addr, "", &image);
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.json(), predicted);
    assert_eq!(predicted["top"][0]["name"], "Sneaker", "{predicted}");
    assert_attention_sums_to_one(&predicted);
    let neighbours = predicted["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 4);
    assert!(neighbours[0]["caption"]
        .as_str()
        .unwrap()
        .starts_with("a photo of a sneaker"));
    assert_eq!(neighbours[0]["label"], "Sneaker");

    // Raw bytes and JSON base64 give the same decision (named "upload").
    let bytes = std::fs::read(&image).unwrap();
    let raw = post(addr, "/v1/classify?top=2&evidence=1", "image/png", &bytes).json();
    assert_eq!(raw["image"], "upload");
    assert_eq!(raw["top"].as_array().unwrap().len(), 2);
    assert_eq!(raw["neighbours"].as_array().unwrap().len(), 1);
    assert_eq!(raw["top"][0], predicted["top"][0]);
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let body = serde_json::json!({"image_base64": encoded, "name": "00000.png"});
    let json = post(
        addr,
        "/v1/classify",
        "application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(json.json(), predicted);

    // k changes how many entries are retrieved; the attention still sums to one.
    let wider = classify_file(addr, "?k=8", &image).json();
    assert_eq!(wider["neighbours"].as_array().unwrap().len(), 8);
    assert_attention_sums_to_one(&wider);

    // A memory entry's own image, by id.
    let entry = post(
        addr,
        "/v1/classify",
        "application/json",
        br#"{"memory_id": 0}"#,
    )
    .json();
    assert_eq!(entry["image"], "memory:0");
    assert_eq!(entry["neighbours"][0]["memory_id"], 0, "{entry}");

    // Search by image: the nearest entry first, with its similarity.
    let found = post(addr, "/v1/search?k=5", "image/png", &bytes).json();
    assert_eq!(found["query"], "image");
    let found = found["neighbours"].as_array().unwrap();
    assert_eq!(found.len(), 5);
    assert_eq!(
        found[0]["memory_id"],
        predicted["neighbours"][0]["memory_id"]
    );
    assert!(found[0]["attention"].is_null());
    // Search by text, through the memory's caption encoder.
    let found = post(
        addr,
        "/v1/search?k=3",
        "application/json",
        br#"{"text": "a bag"}"#,
    )
    .json();
    assert_eq!(found["searched"], "text values", "{found}");
    for n in found["neighbours"].as_array().unwrap() {
        assert_eq!(n["label"], "Bag", "{found}");
    }

    // An entry's metadata and its thumbnail.
    let entry = get(addr, "/v1/memory/3").json();
    assert_eq!(entry["id"], 3);
    assert_eq!(entry["deleted"], false);
    assert!(entry["source"].as_str().unwrap().ends_with(".png"));
    let thumbnail = get(addr, "/v1/memory/3/image?size=64");
    assert_eq!(thumbnail.status, 200);
    assert_eq!(thumbnail.header("content-type"), Some("image/png"));
    let decoded = image::load_from_memory(&thumbnail.body).unwrap();
    assert!(decoded.width() <= 64 && decoded.height() <= 64);

    // The description, the metrics, the schema and the page.
    let info = get(addr, "/v1/info").json();
    assert_eq!(info["model"]["method"], "mam");
    assert_eq!(info["memory_entries"], 48);
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("ramem_requests_total{route=\"/v1/classify\",status=\"200\"} 5"),
        "{metrics}"
    );
    assert!(metrics.contains("ramem_batch_size_count"), "{metrics}");
    assert!(metrics.contains("ramem_memory_entries 48"), "{metrics}");
    let schema = get(addr, "/openapi.json").json();
    for path in [
        "/v1/classify",
        "/v1/search",
        "/v1/memory/{id}",
        "/v1/memory/{id}/image",
    ] {
        assert!(
            schema["paths"].get(path).is_some(),
            "{path} is not described"
        );
    }
    let page = get(addr, "/");
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("<script src=\"/app.js\""));
    assert_eq!(get(addr, "/app.js").status, 200);
}

/// A PNG whose header claims `width x height` pixels (a decompression
/// bomb's header), followed by the start of its pixel data.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let chunk = |png: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        let mut typed = kind.to_vec();
        typed.extend_from_slice(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&typed);
        png.extend_from_slice(&crc32(&typed).to_be_bytes());
    };
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // A zlib stream of one stored block of 16 zero bytes.
    let mut idat = vec![0x78, 0x01, 0x00, 16, 0, !16u8, 0xff];
    idat.extend_from_slice(&[0u8; 16]);
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_inputs_get_the_documented_4xx_and_the_server_keeps_answering() {
    let f = fixture();
    let server = Server::start(&f.model, &["--max-body-mb", "4"]);
    let addr = server.addr.as_str();
    let good = std::fs::read(test_image("Bag", 1)).unwrap();
    let mut jpeg = Vec::new();
    image::load_from_memory(&good)
        .unwrap()
        .to_rgb8()
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let truncated = jpeg[..jpeg.len() * 2 / 3].to_vec();
    let huge = vec![0u8; 100 << 20];
    let cases: Vec<(&str, &str, &str, Vec<u8>, u16)> = vec![
        (
            "garbage bytes",
            "/v1/classify",
            "image/png",
            b"not an image at all".to_vec(),
            422,
        ),
        (
            "an empty body",
            "/v1/classify",
            "image/png",
            Vec::new(),
            422,
        ),
        (
            "a truncated JPEG",
            "/v1/classify",
            "image/jpeg",
            truncated,
            422,
        ),
        (
            "a pixel bomb",
            "/v1/classify",
            "image/png",
            png_header(100_000, 100_000),
            413,
        ),
        ("a 100 MB body", "/v1/classify", "image/png", huge, 413),
        (
            "a wrong content type",
            "/v1/classify",
            "text/plain",
            good.clone(),
            415,
        ),
        ("k = 0", "/v1/classify?k=0", "image/png", good.clone(), 400),
        (
            "k above the limit",
            "/v1/classify?k=100000",
            "image/png",
            good.clone(),
            400,
        ),
        (
            "k not a number",
            "/v1/classify?k=many",
            "image/png",
            good.clone(),
            400,
        ),
        (
            "top = 0",
            "/v1/classify?top=0",
            "image/png",
            good.clone(),
            400,
        ),
        (
            "an unknown parameter",
            "/v1/classify?topk=3",
            "image/png",
            good.clone(),
            400,
        ),
        (
            "JSON that is not the body's shape",
            "/v1/classify",
            "application/json",
            br#"{"image": 1}"#.to_vec(),
            400,
        ),
        (
            "base64 that is not",
            "/v1/classify",
            "application/json",
            br#"{"image_base64": "%%%"}"#.to_vec(),
            400,
        ),
        (
            "a multipart form without an image",
            "/v1/classify",
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\n1\r\n--x--\r\n".to_vec(),
            400,
        ),
        (
            "a text to classify",
            "/v1/classify",
            "application/json",
            br#"{"text": "a bag"}"#.to_vec(),
            400,
        ),
        (
            "a memory entry that does not exist",
            "/v1/classify",
            "application/json",
            br#"{"memory_id": 999999}"#.to_vec(),
            404,
        ),
        (
            "an empty text",
            "/v1/search",
            "application/json",
            br#"{"text": "  "}"#.to_vec(),
            400,
        ),
        (
            "a text too long",
            "/v1/search",
            "application/json",
            format!("{{\"text\": \"{}\"}}", "a".repeat(5000)).into_bytes(),
            400,
        ),
        (
            "an unknown route",
            "/v1/nothing",
            "image/png",
            good.clone(),
            404,
        ),
    ];
    for (what, path, content_type, body, status) in cases {
        let response = post(addr, path, content_type, &body);
        assert_eq!(response.status, status, "{what}: {}", response.text());
        let error = response.json();
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {error}"
        );
    }
    for (what, method, path, status) in [
        ("GET of a POST route", "GET", "/v1/classify", 405),
        (
            "an entry id that is not a number",
            "GET",
            "/v1/memory/abc",
            400,
        ),
        (
            "an entry that does not exist",
            "GET",
            "/v1/memory/123456",
            404,
        ),
        (
            "a thumbnail size out of range",
            "GET",
            "/v1/memory/0/image?size=100000",
            400,
        ),
        ("an unknown path", "GET", "/nothing/here", 404),
        ("DELETE of an entry", "DELETE", "/v1/memory/0", 405),
    ] {
        let response = request(addr, method, path, &[], &[]).unwrap();
        assert_eq!(response.status, status, "{what}: {}", response.text());
        assert!(response.json()["error"]["code"].is_string(), "{what}");
    }
    // Still answering, and nothing was a 5xx.
    let fine = post(addr, "/v1/classify", "image/png", &good);
    assert_eq!(fine.status, 200, "{}", fine.text());
    let metrics = get(addr, "/metrics").text();
    assert!(!metrics.contains("status=\"5"), "{metrics}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_nothing_else_fails() {
    let f = fixture();
    let server = Server::start(&f.model, &["--queue", "1", "--max-batch", "1"]);
    let addr = server.addr.clone();
    let bytes = std::fs::read(test_image("Trouser", 2)).unwrap();
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|_| {
                let (addr, bytes) = (&addr, &bytes);
                scope.spawn(move || {
                    let r = post(addr, "/v1/classify", "image/png", bytes);
                    (r.status, r.header("retry-after").map(str::to_string))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy = statuses.iter().filter(|(s, _)| *s == 503).count();
    let answered = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(busy + answered, statuses.len(), "{statuses:?}");
    assert!(busy > 0 && answered > 0, "{statuses:?}");
    assert!(statuses
        .iter()
        .filter(|(s, _)| *s == 503)
        .all(|(_, retry)| retry.as_deref() == Some("1")));
}

#[test]
fn sigterm_drains_the_requests_in_flight_then_exits() {
    let f = fixture();
    let mut server = Server::start(&f.model, &["--max-wait-ms", "200"]);
    let addr = server.addr.clone();
    let bytes = std::fs::read(test_image("Sneaker", 3)).unwrap();
    let statuses = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (addr, bytes) = (&addr, &bytes);
                scope.spawn(move || post(addr, "/v1/classify", "image/png", bytes).status)
            })
            .collect();
        // The requests are in: the batch waits 200 ms for more.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pid = server.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(statuses, vec![200; 6], "{}", server.log());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}\n{}", server.log());
    assert!(server.log().contains("stopped"), "{}", server.log());
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

#[test]
fn entries_added_while_serving_are_seen_without_a_restart() {
    let f = fixture();
    let memory = f.root.join("growing");
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&memory),
        "--input",
        &format!("folders:{}", f.data.display()),
        "--split",
        "train",
        "--values",
        "both",
        "--skip-classes",
        "Bag",
    ]);
    let server = Server::start(&f.model, &["--memory", p(&memory)]);
    let addr = server.addr.as_str();
    assert_eq!(get(addr, "/v1/info").json()["memory_entries"], 32);
    let bag = std::fs::read(test_image("Bag", 0)).unwrap();
    let before = post(addr, "/v1/search?k=3", "image/png", &bag).json();
    assert!(before["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["label"] != "Bag"));

    ok(&[
        "memory",
        "add",
        "--memory",
        p(&memory),
        "--input",
        &format!("folders:{}", f.data.display()),
        "--split",
        "train",
        "--only-classes",
        "Bag",
    ]);
    let after = post(addr, "/v1/search?k=3", "image/png", &bag).json();
    let ids: Vec<i64> = after["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["memory_id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.iter().all(|&id| id >= 32),
        "the added Bag entries come first: {after}"
    );
    assert_eq!(after["neighbours"][0]["label"], "Bag");
    assert_eq!(get(addr, "/v1/info").json()["memory_entries"], 48);
    assert_eq!(get(addr, "/v1/memory/40").json()["label"], "Bag");
    let decision = post(addr, "/v1/classify", "image/png", &bag).json();
    assert!(decision["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["memory_id"].as_i64().unwrap() >= 32));
}

#[test]
fn a_bounded_load_from_16_clients_gets_no_error() {
    let f = fixture();
    let server = Server::start(&f.model, &[]);
    let addr = server.addr.clone();
    let images: Vec<Vec<u8>> = CLASSES
        .iter()
        .flat_map(|c| (0..4).map(move |i| test_image(c, i)))
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    let per_client = 10;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|client| {
                let (addr, images) = (&addr, &images);
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for i in 0..per_client {
                        let image = &images[(client + i) % images.len()];
                        match request(
                            addr,
                            "POST",
                            "/v1/classify",
                            &[("Content-Type", "image/png")],
                            image,
                        ) {
                            Ok(r) if r.status == 200 => {}
                            Ok(r) => failures.push(format!("{}: {}", r.status, r.text())),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{failures:?}");
    let metrics = get(&addr, "/metrics").text();
    assert!(
        metrics.contains("ramem_requests_total{route=\"/v1/classify\",status=\"200\"} 160"),
        "{metrics}"
    );
    // Requests that arrived together were batched.
    let batches: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ramem_batch_size_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(batches < 160.0, "no request was batched: {batches} batches");
}

/// A checker outside Rust, found where `scripts/setup.sh --test` installs it.
fn tool(what: &str, path: &Path) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is not installed at {}: run scripts/setup.sh --test",
        path.display()
    );
    path.to_path_buf()
}

/// Runs a checker (a browser script, schemathesis), which must succeed:
/// what it printed.
fn run_checker(what: &str, command: &mut std::process::Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} (scripts/setup.sh --test installs it): {e}"));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{log}");
    log
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_page_shows_the_decision_and_its_evidence_in_a_real_browser() {
    let f = fixture();
    let root = repo_root();
    let script = root.join("crates/ramem-serve/tests/browser/page.mjs");
    tool(
        "playwright-core",
        &root.join("crates/ramem-serve/tests/browser/node_modules/playwright-core"),
    );
    let server = Server::start(&f.model, &[]);
    let artefacts = root.join("target/test-artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let photo = test_image("Sneaker", 1);
    let log = run_checker(
        "the browser check",
        std::process::Command::new("node").arg(&script).args([
            &format!("http://{}", server.addr),
            p(&photo),
            p(&artefacts.join("serve-page.png")),
        ]),
    );
    assert!(log.contains("page ok"), "{log}");
    assert!(artefacts.join("serve-page.png").is_file());
}

#[test]
fn generated_requests_from_the_openapi_schema_get_no_5xx_and_conforming_answers() {
    let f = fixture();
    let root = repo_root();
    let schemathesis = tool(
        "schemathesis",
        &root.join("target/test-venv/bin/schemathesis"),
    );
    let server = Server::start(&f.model, &[]);
    let report = root.join("target/test-artefacts/schemathesis.xml");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    let config = root.join("crates/ramem-serve/tests/schemathesis.toml");
    run_checker(
        "schemathesis",
        std::process::Command::new(&schemathesis)
            .args([
                "--config-file",
                p(&config),
                "run",
                &format!("http://{}/openapi.json", server.addr),
                "--checks",
                "all",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--generation-database",
                "none",
                "--report",
                "junit",
                "--report-junit-path",
                p(&report),
            ])
            // Its caches go beside its report, not into the source tree.
            .current_dir(report.parent().unwrap()),
    );
    let metrics = get(&server.addr, "/metrics").text();
    assert!(!metrics.contains("status=\"5"), "{metrics}");
    assert!(!server.log().contains("panicked"));
}
