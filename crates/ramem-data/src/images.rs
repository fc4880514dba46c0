//! Unlabelled image input: every image under a directory, the paths a list
//! file names, or one image file; and [`ImageItem`], one image with its
//! caption where the input has one, which is what a memory is built from.

use std::path::{Path, PathBuf};

use crate::error::{io_err, DataError, Result};
use crate::folders::is_image;
use crate::{ImageSource, TextSource, IMAGE_EXTENSIONS};

/// One input image file: `id` is what a row is named by (the path relative
/// to the input directory, or the path as the list file wrote it), `path`
/// is where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub id: String,
    pub path: PathBuf,
}

/// One image to encode, with its caption where the input has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    /// A stable name, unique within the input (resumable runs fingerprint it).
    pub id: String,
    /// Where the entry came from, as a memory's metadata records it.
    pub source: String,
    pub image: ImageSource,
    pub caption: Option<TextSource>,
    /// The class name, where the input labels its images (a data set spec).
    pub label: Option<String>,
}

impl ImageItem {
    /// The image file with the caption of its sidecar `x.txt` (next to
    /// `x.jpg`), where there is one.
    pub fn with_sidecar_caption(file: ImageFile) -> ImageItem {
        let sidecar = file.path.with_extension("txt");
        ImageItem {
            id: file.id,
            source: file.path.display().to_string(),
            caption: sidecar.is_file().then_some(TextSource::File(sidecar)),
            image: ImageSource::File(file.path),
            label: None,
        }
    }
}

/// Images named by `input`: a directory (walked recursively, following
/// links, sorted by relative path), one image file (recognised by its
/// extension), or a list file (one path per line; a trailing integer label,
/// as in ImageNet-LT lists, is ignored; `#` starts a comment line; relative
/// paths are resolved against `root`, else the list file's directory).
/// Also returns how many files under a directory were not images.
pub fn list_images(input: &Path, root: Option<&Path>) -> Result<(Vec<ImageFile>, usize)> {
    let meta = std::fs::metadata(input).map_err(io_err(input, "read the input"))?;
    if meta.is_dir() {
        let mut found = Vec::new();
        let mut ignored = 0usize;
        walk(input, input, &mut found, &mut ignored)?;
        found.sort_by(|a, b| a.id.cmp(&b.id));
        if found.is_empty() {
            return Err(DataError::Empty {
                path: input.to_path_buf(),
                what: format!(
                    "no images found (looked for {} files{})",
                    IMAGE_EXTENSIONS.join(", "),
                    if ignored > 0 {
                        format!("; {ignored} other files ignored")
                    } else {
                        String::new()
                    }
                ),
            });
        }
        return Ok((found, ignored));
    }
    if is_image(input) {
        let id = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| input.display().to_string());
        return Ok((
            vec![ImageFile {
                id,
                path: input.to_path_buf(),
            }],
            0,
        ));
    }
    let bytes = std::fs::read(input).map_err(io_err(input, "read the list file"))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        DataError::Invalid(format!(
            "{}: not a list file (not UTF-8 text) and not an image ({})",
            input.display(),
            IMAGE_EXTENSIONS.join(", ")
        ))
    })?;
    let base = root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| input.parent().map(Path::to_path_buf).unwrap_or_default());
    let images: Vec<ImageFile> = text
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
            ImageFile { id, path }
        })
        .collect();
    if images.is_empty() {
        return Err(DataError::Empty {
            path: input.to_path_buf(),
            what: "the list file names no images".into(),
        });
    }
    Ok((images, 0))
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

fn walk(root: &Path, dir: &Path, found: &mut Vec<ImageFile>, ignored: &mut usize) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir, "list the directory"))? {
        let entry = entry.map_err(io_err(dir, "list the directory"))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path, "stat"))?;
        if kind.is_dir() || (kind.is_symlink() && path.is_dir()) {
            walk(root, &path, found, ignored)?;
            continue;
        }
        if is_image(&path) {
            let id = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            found.push(ImageFile { id, path });
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
        for f in ["z.png", "a.JPG", "b/c.jpeg", "notes.txt", "b.png"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let (images, ignored) = list_images(dir.path(), None).unwrap();
        let ids: Vec<_> = images.iter().map(|i| i.id.as_str()).collect();
        // Sorted by the relative path as text: "b.png" before "b/c.jpeg".
        assert_eq!(ids, ["a.JPG", "b.png", "b/c.jpeg", "z.png"]);
        assert_eq!(ignored, 1);
    }

    #[test]
    fn one_image_file_is_one_input_and_a_binary_file_is_not_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("cat.jpg");
        std::fs::write(&photo, [0xff, 0xd8, 0xff, 0x00, 0x80]).unwrap();
        let (images, _) = list_images(&photo, None).unwrap();
        assert_eq!(
            images,
            [ImageFile {
                id: "cat.jpg".into(),
                path: photo
            }]
        );
        let odd = dir.path().join("cat.raw");
        std::fs::write(&odd, [0xff, 0xd8, 0xff, 0x00, 0x80]).unwrap();
        let e = list_images(&odd, None).unwrap_err().to_string();
        assert!(e.contains("cat.raw") && e.contains("not UTF-8"), "{e}");
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
