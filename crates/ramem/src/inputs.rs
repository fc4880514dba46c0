//! Which images a command reads: every image under a directory (sorted by
//! path), or the paths listed in a text file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// File extensions treated as images when walking a directory.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"];

/// One input image: `id` is what ids.txt records (the path relative to the
/// input directory, or the path as the list file wrote it), `path` is where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInput {
    pub id: String,
    pub path: PathBuf,
}

/// Images named by `input`: a directory (walked recursively, sorted by
/// relative path) or a list file (one path per line; a trailing integer
/// label, as in ImageNet-LT lists, is ignored; relative paths are resolved
/// against `root`, else the list file's directory).
pub fn list_images(input: &Path, root: Option<&Path>) -> Result<(Vec<ImageInput>, usize)> {
    let meta = std::fs::metadata(input)
        .with_context(|| format!("{}: cannot read input", input.display()))?;
    if meta.is_dir() {
        let mut found = Vec::new();
        let mut ignored = 0usize;
        walk(input, input, &mut found, &mut ignored)?;
        found.sort_by(|a, b| a.id.cmp(&b.id));
        if found.is_empty() {
            bail!(
                "{}: no images found (looked for {} files{})",
                input.display(),
                IMAGE_EXTENSIONS.join(", "),
                if ignored > 0 {
                    format!("; {ignored} other files ignored")
                } else {
                    String::new()
                }
            );
        }
        Ok((found, ignored))
    } else {
        let text = std::fs::read_to_string(input)
            .with_context(|| format!("{}: cannot read list file", input.display()))?;
        let base = root
            .map(Path::to_path_buf)
            .unwrap_or_else(|| input.parent().map(Path::to_path_buf).unwrap_or_default());
        let images: Vec<ImageInput> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let id = strip_label(line).to_string();
                let path = if Path::new(&id).is_absolute() {
                    PathBuf::from(&id)
                } else {
                    base.join(&id)
                };
                ImageInput { id, path }
            })
            .collect();
        if images.is_empty() {
            bail!("{}: the list file names no images", input.display());
        }
        Ok((images, 0))
    }
}

/// `"train/n01/x.jpg 17"` -> `"train/n01/x.jpg"`; a line without a numeric last field is kept whole.
fn strip_label(line: &str) -> &str {
    match line.rsplit_once(char::is_whitespace) {
        Some((path, label)) if !path.trim().is_empty() && label.parse::<i64>().is_ok() => {
            path.trim_end()
        }
        _ => line,
    }
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<ImageInput>, ignored: &mut usize) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list directory", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("{}: cannot stat", path.display()))?;
        if kind.is_dir() || (kind.is_symlink() && path.is_dir()) {
            walk(root, &path, found, ignored)?;
            continue;
        }
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image {
            let id = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            found.push(ImageInput { id, path });
        } else {
            *ignored += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_file_labels_are_stripped() {
        assert_eq!(strip_label("train/a b.jpg 12"), "train/a b.jpg");
        assert_eq!(strip_label("photo 2.jpg"), "photo 2.jpg");
        assert_eq!(strip_label("x.png"), "x.png");
    }

    #[test]
    fn directory_is_sorted_and_recursive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        for f in ["z.png", "a.JPG", "b/c.jpeg", "notes.txt"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let (images, ignored) = list_images(dir.path(), None).unwrap();
        let ids: Vec<_> = images.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a.JPG", "b/c.jpeg", "z.png"]);
        assert_eq!(ignored, 1);
    }

    #[test]
    fn empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("readme.md"), b"x").unwrap();
        let e = list_images(dir.path(), None).unwrap_err().to_string();
        assert!(
            e.contains("no images found") && e.contains("1 other files ignored"),
            "{e}"
        );
    }
}
