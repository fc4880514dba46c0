//! The Open Clip Art tree: `png/<category path>/<name>.png` with a parallel
//! `svg/<category path>/<name>.svg` whose RDF metadata gives a title and
//! keyword tags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::error::{io_err, DataError, Result};
use crate::folders::sorted_entries;
use crate::{Example, ImageSource, LabelledSet};

/// Reads the Open Clip Art tree under `root` (which holds `png/` and `svg/`).
///
/// Every `png/<category path>/<name>.png` is an example whose class is its
/// category path relative to `png/` (e.g. `animals/birds`: the image's parent
/// directory, so nested categories are classes of their own). Classes with
/// fewer than `min_images_per_class` images are dropped; the rest are sorted
/// by name, and images by path, so the result is deterministic.
///
/// Symbolic links are skipped: the Debian tree links some images into
/// further categories (1,221 links beside 6,900 files), and keeping them
/// would give one image several labels and let copies straddle a
/// train/test split. Each image appears once, under its real file's
/// category.
///
/// The caption comes from `svg/<category path>/<name>.svg` (see
/// [`read_svg_caption`]). A missing or unreadable SVG leaves the example
/// without a caption and adds a line to the set's `warnings`; so do PNGs
/// directly in `png/`, which have no category and are skipped.
pub fn read_openclipart(root: &Path, min_images_per_class: usize) -> Result<LabelledSet> {
    let png_root = root.join("png");
    let svg_root = root.join("svg");
    if !png_root.is_dir() {
        return Err(DataError::Io {
            path: png_root,
            action: "find the Open Clip Art png/ directory",
            error: std::io::ErrorKind::NotFound.into(),
        });
    }
    let mut warnings = Vec::new();
    let mut by_class: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut pngs = Vec::new();
    collect_pngs(&png_root, &mut pngs)?;
    for png in pngs {
        let rel = png.strip_prefix(&png_root).unwrap_or(&png);
        let class = rel
            .parent()
            .map(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        if class.is_empty() {
            warnings.push(format!(
                "{}: directly in png/, so it has no category; skipped",
                png.display()
            ));
            continue;
        }
        by_class.entry(class).or_default().push(png);
    }
    by_class.retain(|_, images| images.len() >= min_images_per_class.max(1));
    if by_class.is_empty() {
        return Err(DataError::Empty {
            path: png_root,
            what: format!("no category has at least {min_images_per_class} PNG images"),
        });
    }
    if !svg_root.is_dir() {
        warnings.push(format!(
            "{}: no svg/ directory, so no example has a caption",
            svg_root.display()
        ));
    }
    let mut class_names = Vec::with_capacity(by_class.len());
    let mut examples = Vec::new();
    for (label, (class, images)) in by_class.into_iter().enumerate() {
        for png in images {
            let rel = png.strip_prefix(&png_root).unwrap_or(&png).to_path_buf();
            let svg = svg_root.join(&rel).with_extension("svg");
            let caption = if !svg_root.is_dir() {
                None
            } else if !svg.is_file() {
                warnings.push(format!("{}: no SVG, so no caption", svg.display()));
                None
            } else {
                read_svg_caption(&svg).unwrap_or_else(|e| {
                    warnings.push(format!("{e}; no caption"));
                    None
                })
            };
            examples.push(Example {
                id: rel.to_string_lossy().replace('\\', "/"),
                image: ImageSource::File(png),
                label,
                caption,
            });
        }
        class_names.push(class);
    }
    Ok(LabelledSet {
        name: root.display().to_string(),
        class_names,
        examples,
        warnings,
    })
}

/// Every `.png` under `dir`, recursively, in sorted path order; symbolic
/// links are skipped.
fn collect_pngs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path, "inspect"))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            collect_pngs(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The caption of an Open Clip Art SVG: the work's `<dc:title>` and the
/// `<rdf:li>` keywords of its `<dc:subject>`, as `title. tags: a, b, c`
/// (empty and repeated tags left out; just the title, or just `tags: ...`,
/// when the other is missing). `Ok(None)` when the SVG has neither.
///
/// Titles of agents (creator, publisher, rights) are not the work's title and
/// are ignored. Reading stops at the end of the first `<metadata>` element.
/// Malformed XML is an error naming the file.
pub fn read_svg_caption(path: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(path).map_err(io_err(path, "read the SVG"))?;
    let text = String::from_utf8_lossy(&bytes);
    let (title, tags) = parse_svg_metadata(&text).map_err(|problem| {
        DataError::Invalid(format!("{}: malformed SVG: {problem}", path.display()))
    })?;
    let tags = if tags.is_empty() {
        None
    } else {
        Some(format!("tags: {}", tags.join(", ")))
    };
    Ok(match (title, tags) {
        (Some(title), Some(tags)) => Some(format!("{}. {tags}", title.trim_end_matches('.'))),
        (Some(title), None) => Some(title),
        (None, tags) => tags,
    })
}

/// Where a run of text is being collected.
enum Capture {
    None,
    Title(String),
    Tag(String),
}

impl Capture {
    fn push(&mut self, s: &str) {
        match self {
            Capture::Title(t) | Capture::Tag(t) => t.push_str(s),
            Capture::None => {}
        }
    }
}

/// Collapses runs of whitespace into single spaces and trims the ends.
fn normalize_space(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The work's title and subject keywords, or what is wrong with the XML.
fn parse_svg_metadata(text: &str) -> std::result::Result<(Option<String>, Vec<String>), String> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut capture = Capture::None;
    let mut title: Option<String> = None;
    let mut tags: Vec<String> = Vec::new();
    let at = |reader: &Reader<&[u8]>| format!("at byte {}", reader.error_position());
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("{e} ({})", at(&reader)))?;
        match event {
            Event::Start(e) => {
                let name = e.name().as_ref().to_string();
                let in_agent = stack.iter().any(|n| n == "cc:Agent");
                let in_subject = stack.iter().any(|n| n == "dc:subject");
                capture = match name.as_str() {
                    "dc:title" if !in_agent && title.is_none() => Capture::Title(String::new()),
                    "rdf:li" if in_subject => Capture::Tag(String::new()),
                    _ => Capture::None,
                };
                stack.push(name);
            }
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                match std::mem::replace(&mut capture, Capture::None) {
                    Capture::Title(t) => {
                        let t = normalize_space(&t);
                        if !t.is_empty() {
                            title = Some(t);
                        }
                    }
                    Capture::Tag(t) => {
                        let t = normalize_space(&t);
                        if !t.is_empty() && !tags.contains(&t) {
                            tags.push(t);
                        }
                    }
                    Capture::None => {}
                }
                if name == "metadata" || name.ends_with(":metadata") {
                    break;
                }
            }
            Event::Text(t) => capture.push(&t.xml10_content()),
            Event::CData(t) => capture.push(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let name = r.xml10_content();
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    capture.push(c.encode_utf8(&mut [0; 4]));
                } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(&name) {
                    capture.push(s);
                } else {
                    capture.push(&format!("&{name};"));
                }
            }
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(format!("the file ends inside <{open}>"));
                }
                break;
            }
            _ => {}
        }
    }
    Ok((title, tags))
}
