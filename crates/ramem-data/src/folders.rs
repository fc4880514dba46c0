//! Class-per-folder image trees (`root/<class>/<image>`).

use std::path::{Path, PathBuf};

use crate::error::{io_err, DataError, Result};
use crate::{Example, ImageSource, LabelledSet, TextSource};

/// File extensions (lower case) read as images, by every reader.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|k| k.eq_ignore_ascii_case(e)))
}

/// Whether a directory entry is hidden (`.git`, `.DS_Store`...).
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The entries of `dir`, sorted by name, hidden ones left out.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir, "list the directory"))? {
        let path = entry.map_err(io_err(dir, "list the directory"))?.path();
        if !is_hidden(&path) {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

/// Every image file under `dir` (recursively), in sorted path order.
pub(crate) fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            images_under(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a class-per-folder tree: every immediate sub-directory of `root` is
/// a class (classes sorted by name, so label `i` is the `i`-th folder), and
/// every image under it (searched recursively, sorted by path) an example.
///
/// Files directly in `root`, hidden entries and files without an image
/// extension ([`IMAGE_EXTENSIONS`]) are ignored. A class folder with no
/// images, or a root with no class folders, is an error.
pub fn read_class_folders(root: &Path) -> Result<LabelledSet> {
    let mut class_names = Vec::new();
    let mut examples = Vec::new();
    for dir in sorted_entries(root)? {
        if !dir.is_dir() {
            continue;
        }
        let label = class_names.len();
        let mut images = Vec::new();
        images_under(&dir, &mut images)?;
        if images.is_empty() {
            return Err(DataError::Empty {
                path: dir,
                what: format!(
                    "class folder has no images (looked for {})",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            });
        }
        for path in images {
            let id = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            // A sidecar `x.txt` beside `x.png` is the image's caption.
            let sidecar = path.with_extension("txt");
            let caption = match sidecar.is_file() {
                true => Some(TextSource::File(sidecar).read()?.trim().to_string()),
                false => None,
            };
            examples.push(Example {
                id,
                image: ImageSource::File(path),
                label,
                caption,
            });
        }
        class_names.push(
            dir.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    if class_names.is_empty() {
        return Err(DataError::Empty {
            path: root.to_path_buf(),
            what: "no class folders (expected one sub-directory of images per class)".into(),
        });
    }
    Ok(LabelledSet {
        name: root.display().to_string(),
        class_names,
        examples,
        warnings: Vec::new(),
    })
}
