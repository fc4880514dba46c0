//! Webdataset tar shards: samples are groups of tar members sharing a key
//! (`0001.jpg`, `0001.txt`, `0001.cls`). One scanner ([`scan_shard`]) finds
//! every sample's members by byte range without reading image data; the
//! labelled reader ([`read_webdataset`]) and the unlabelled one
//! ([`read_webdataset_items`]) build on it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{io_err, DataError, Result};
use crate::{
    numeric_class_names, Example, ImageItem, ImageSource, LabelledSet, TarMember, TextSource,
    IMAGE_EXTENSIONS,
};

/// Caption extensions, preferred in this order.
const CAPTION_EXTS: [&str; 2] = ["txt", "caption"];
/// The label extension.
const LABEL_EXT: &str = "cls";

/// The members of one sample that ramem reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSample {
    /// The member path up to the first `.` of the file name.
    pub key: String,
    /// The preferred image (see [`scan_shard`]).
    pub image: Option<TarMember>,
    pub caption: Option<TarMember>,
    pub label: Option<TarMember>,
}

/// The samples of one shard, in the order their keys first appear, and
/// warnings about what was left out.
///
/// A sample's key is its member path up to the first `.` of the file name
/// (hidden files, whose names start with `.`, are skipped). Its image is
/// `KEY.jpg`, `.jpeg`, `.png`, `.webp` or another of [`IMAGE_EXTENSIONS`]
/// (the first of these wins if there are several, with a warning), its
/// caption `KEY.txt` (or `KEY.caption`),
/// its label `KEY.cls`; other members are ignored.
pub fn scan_shard(shard: &Path) -> Result<(Vec<ShardSample>, Vec<String>)> {
    let file = File::open(shard).map_err(io_err(shard, "open the tar shard"))?;
    let mut archive = tar::Archive::new(file);
    let bad_tar = |error| DataError::Io {
        path: shard.to_path_buf(),
        action: "read the tar shard (not a readable tar archive?)",
        error,
    };
    let mut order: Vec<String> = Vec::new();
    // Per key: (image ext rank, member), caption (rank, member), label.
    type Found = (
        Option<(usize, TarMember)>,
        Option<(usize, TarMember)>,
        Option<TarMember>,
    );
    let mut samples: HashMap<String, Found> = HashMap::new();
    let mut warnings = Vec::new();
    let mut entries = 0usize;
    for entry in archive.entries_with_seek().map_err(bad_tar)? {
        let entry = entry.map_err(bad_tar)?;
        entries += 1;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let (dir, file_name) = match member.rfind('/') {
            Some(i) => (&member[..=i], &member[i + 1..]),
            None => ("", member.as_str()),
        };
        if file_name.starts_with('.') {
            continue;
        }
        let Some(dot) = file_name.find('.') else {
            continue;
        };
        let key = format!("{dir}{}", &file_name[..dot]);
        let ext = file_name[dot + 1..].to_ascii_lowercase();
        let image_rank = IMAGE_EXTENSIONS.iter().position(|e| *e == ext);
        let caption_rank = CAPTION_EXTS.iter().position(|e| *e == ext);
        if image_rank.is_none() && caption_rank.is_none() && ext != LABEL_EXT {
            continue;
        }
        let location = TarMember {
            shard: shard.to_path_buf(),
            member: member.clone(),
            offset: entry.raw_file_position(),
            len: entry.size(),
        };
        let sample = samples.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            (None, None, None)
        });
        if let Some(rank) = image_rank {
            match &sample.0 {
                Some((kept, _)) => {
                    warnings.push(format!(
                        "{}: sample {key} has more than one image; using its {}",
                        shard.display(),
                        IMAGE_EXTENSIONS[rank.min(*kept)]
                    ));
                    if rank < *kept {
                        sample.0 = Some((rank, location));
                    }
                }
                None => sample.0 = Some((rank, location)),
            }
        } else if let Some(rank) = caption_rank {
            if sample.1.as_ref().is_none_or(|(kept, _)| rank < *kept) {
                sample.1 = Some((rank, location));
            }
        } else if sample.2.is_none() {
            sample.2 = Some(location);
        }
    }
    let len = std::fs::metadata(shard).map(|m| m.len()).unwrap_or(0);
    if entries == 0 && len > 0 {
        return Err(DataError::Invalid(format!(
            "{}: not a readable tar archive",
            shard.display()
        )));
    }
    let samples = order
        .into_iter()
        .filter_map(|key| {
            let (image, caption, label) = samples.remove(&key)?;
            Some(ShardSample {
                key,
                image: image.map(|(_, m)| m),
                caption: caption.map(|(_, m)| m),
                label,
            })
        })
        .collect();
    Ok((samples, warnings))
}

/// The text of a small member (a label or a caption), lossily decoded and trimmed.
fn member_text(member: &TarMember) -> Result<String> {
    Ok(String::from_utf8_lossy(&member.read()?).trim().to_string())
}

/// Reads labelled samples from webdataset tar shards, in shard order and, in
/// each shard, in the order their keys first appear (see [`scan_shard`]).
///
/// Each sample needs an image and an integer label (`KEY.cls`); `KEY.txt`
/// is its caption. Images stay in the shard until they are loaded
/// ([`ImageSource::TarMember`]). Class names are numeric, one more than the
/// largest label.
pub fn read_webdataset(shards: &[PathBuf]) -> Result<LabelledSet> {
    let mut examples = Vec::new();
    let mut warnings = Vec::new();
    for shard in shards {
        let (samples, found_warnings) = scan_shard(shard)?;
        warnings.extend(found_warnings);
        for sample in samples {
            let bad = |problem: String| DataError::Shard {
                shard: shard.to_path_buf(),
                key: sample.key.clone(),
                problem,
            };
            let label = match &sample.label {
                None => {
                    return Err(bad(
                        "no .cls label (a labelled set needs one per sample)".into()
                    ))
                }
                Some(member) => {
                    let text = member_text(member)?;
                    text.parse::<usize>().map_err(|_| {
                        bad(format!(".cls label `{text}` is not a non-negative integer"))
                    })?
                }
            };
            let Some(image) = sample.image.clone() else {
                return Err(bad(format!("no image ({})", IMAGE_EXTENSIONS.join(", "))));
            };
            let caption = match &sample.caption {
                Some(member) => Some(member_text(member)?).filter(|c| !c.is_empty()),
                None => None,
            };
            examples.push(Example {
                id: format!("{}#{}", shard.display(), sample.key),
                image: ImageSource::TarMember(image),
                label,
                caption,
            });
        }
    }
    if examples.is_empty() {
        return Err(DataError::Invalid(format!(
            "webdataset {}: no samples",
            shards
                .iter()
                .map(|s| s.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let n = examples.iter().map(|e| e.label).max().unwrap_or(0) + 1;
    let name = match shards {
        [one] => one.display().to_string(),
        _ => format!(
            "{} and {} more shards",
            shards[0].display(),
            shards.len() - 1
        ),
    };
    Ok(LabelledSet {
        name,
        class_names: numeric_class_names(n),
        examples,
        warnings,
    })
}

/// The samples of webdataset shards as unlabelled [`ImageItem`]s (labels,
/// where present, are not read), in shard order: id `SHARD_FILE_NAME:KEY`,
/// source `SHARD_PATH:KEY`, the caption from `KEY.txt` (or `KEY.caption`).
/// Samples without an image are left out; the warnings say so.
pub fn read_webdataset_items(shards: &[PathBuf]) -> Result<(Vec<ImageItem>, Vec<String>)> {
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    for shard in shards {
        let (samples, found_warnings) = scan_shard(shard)?;
        warnings.extend(found_warnings);
        let name = shard
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let before = items.len();
        let mut captions_only = 0usize;
        for sample in samples {
            let Some(image) = sample.image else {
                captions_only += 1;
                continue;
            };
            items.push(ImageItem {
                id: format!("{name}:{}", sample.key),
                source: format!("{}:{}", shard.display(), sample.key),
                image: ImageSource::TarMember(image),
                caption: sample.caption.map(TextSource::TarMember),
                label: None,
            });
        }
        if captions_only > 0 {
            warnings.push(format!(
                "{}: {captions_only} samples without an image ignored",
                shard.display()
            ));
        }
        if items.len() == before {
            warnings.push(format!("{}: no samples with an image", shard.display()));
        }
    }
    Ok((items, warnings))
}
