//! Webdataset tar shards: samples are groups of tar members sharing a key
//! (`0001.jpg`, `0001.txt`, `0001.cls`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{io_err, DataError, Result};
use crate::{numeric_class_names, Example, ImageSource, LabelledSet};

/// Image extensions of a sample, in the order one is preferred when a sample
/// has several.
const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

#[derive(Default)]
struct Sample {
    images: Vec<(String, String, Vec<u8>)>,
    caption: Option<String>,
    label: Option<String>,
}

/// Reads labelled samples from webdataset tar shards, in shard order and, in
/// each shard, in the order their keys first appear.
///
/// A sample's key is its member path up to the first `.` of the file name.
/// Each sample needs an image (`KEY.jpg`, `.jpeg`, `.png` or `.webp`; the
/// first of these wins if there are several) and an integer label
/// (`KEY.cls`); `KEY.txt` is its caption. Other members are ignored. The
/// image bytes are kept undecoded in [`ImageSource::Encoded`]. Class names
/// are numeric, one more than the largest label.
pub fn read_webdataset(shards: &[PathBuf]) -> Result<LabelledSet> {
    let mut examples = Vec::new();
    for shard in shards {
        read_shard(shard, &mut examples)?;
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
        warnings: Vec::new(),
    })
}

fn read_shard(shard: &Path, examples: &mut Vec<Example>) -> Result<()> {
    let file = std::fs::File::open(shard).map_err(io_err(shard, "open the tar shard"))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut order: Vec<String> = Vec::new();
    let mut samples: HashMap<String, Sample> = HashMap::new();
    let bad_tar = |source| DataError::Io {
        path: shard.to_path_buf(),
        action: "read the tar shard",
        source,
    };
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry
            .path()
            .map_err(bad_tar)?
            .to_string_lossy()
            .into_owned();
        let (dir, file_name) = match member.rfind('/') {
            Some(i) => (&member[..=i], &member[i + 1..]),
            None => ("", member.as_str()),
        };
        let Some(dot) = file_name.find('.') else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let key = format!("{dir}{}", &file_name[..dot]);
        let ext = file_name[dot + 1..].to_ascii_lowercase();
        let wanted = ext == "txt" || ext == "cls" || IMAGE_EXTS.contains(&ext.as_str());
        if !wanted {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(bad_tar)?;
        let sample = samples.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Sample::default()
        });
        let text = || String::from_utf8_lossy(&bytes).trim().to_string();
        match ext.as_str() {
            "txt" => sample.caption = Some(text()),
            "cls" => sample.label = Some(text()),
            _ => sample.images.push((ext, member.clone(), bytes)),
        }
    }
    for key in order {
        let Some(mut sample) = samples.remove(&key) else {
            continue;
        };
        let bad = |problem: String| DataError::Shard {
            shard: shard.to_path_buf(),
            key: key.clone(),
            problem,
        };
        let label = match &sample.label {
            None => {
                return Err(bad(
                    "no .cls label (a labelled set needs one per sample)".into()
                ))
            }
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| bad(format!(".cls label `{l}` is not a non-negative integer")))?,
        };
        sample
            .images
            .sort_by_key(|(ext, _, _)| IMAGE_EXTS.iter().position(|e| e == ext));
        let Some((_, member, bytes)) = sample.images.into_iter().next() else {
            return Err(bad(format!("no image ({})", IMAGE_EXTS.join(", "))));
        };
        examples.push(Example {
            id: format!("{}#{key}", shard.display()),
            image: ImageSource::Encoded {
                name: format!("{}#{member}", shard.display()),
                bytes,
            },
            label,
            caption: sample.caption.filter(|c| !c.is_empty()),
        });
    }
    Ok(())
}
