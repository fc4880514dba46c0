//! MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST...).
//!
//! An IDX file is a 4-byte magic number (two zero bytes, a type code, the
//! number of dimensions), one big-endian `u32` per dimension, then the data.
//! Images are `0x00000803` (unsigned bytes, count x rows x columns); labels
//! are `0x00000801` (unsigned bytes, count).

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{io_err, DataError, Result};
use crate::list::read_class_names;
use crate::{check_class_names, numeric_class_names, Example, ImageSource, LabelledSet, TrainTest};

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const UNSIGNED_BYTE: u8 = 0x08;

/// Reads an IDX directory holding the standard files
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each optionally
/// gzipped (`.gz`; the uncompressed file wins when both exist).
///
/// Class names: `class_names` if given, else `DIR/class_names.txt` (one per
/// line) if it exists, else numeric (`0`, `1`, ... up to the largest label in
/// either split).
pub fn read_idx(dir: &Path, class_names: Option<Vec<String>>) -> Result<TrainTest> {
    let find = |stem: &str| -> Result<PathBuf> {
        let plain = dir.join(stem);
        let gz = dir.join(format!("{stem}.gz"));
        if plain.is_file() {
            Ok(plain)
        } else if gz.is_file() {
            Ok(gz)
        } else {
            Err(DataError::Io {
                path: plain,
                action: "find the IDX file (nor its .gz)",
                error: std::io::ErrorKind::NotFound.into(),
            })
        }
    };
    let name = dir.display().to_string();
    let mut train = read_idx_pair(
        &find("train-images-idx3-ubyte")?,
        &find("train-labels-idx1-ubyte")?,
    )?;
    let mut test = read_idx_pair(
        &find("t10k-images-idx3-ubyte")?,
        &find("t10k-labels-idx1-ubyte")?,
    )?;
    train.name = format!("{name} train");
    test.name = format!("{name} test");
    for example in &mut train.examples {
        example.id = format!("train#{}", example.id);
    }
    for example in &mut test.examples {
        example.id = format!("test#{}", example.id);
    }
    let names_file = dir.join("class_names.txt");
    let names = match class_names {
        Some(names) => names,
        None if names_file.is_file() => read_class_names(&names_file)?,
        None => numeric_class_names(train.num_classes().max(test.num_classes())),
    };
    check_class_names(&train.name, &names, &train.labels())?;
    check_class_names(&test.name, &names, &test.labels())?;
    train.class_names = names.clone();
    test.class_names = names;
    Ok(TrainTest { train, test })
}

/// Reads one IDX images file and its labels file into a set with numeric
/// class names. Example ids are the indices (`0`, `1`, ...).
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<LabelledSet> {
    let (dims, pixels) = read_idx_file(images, 3)?;
    let (label_dims, label_bytes) = read_idx_file(labels, 1)?;
    let (count, height, width) = (dims[0], dims[1], dims[2]);
    if label_dims[0] != count {
        return Err(DataError::Idx {
            path: labels.to_path_buf(),
            problem: format!(
                "{} labels, but {} has {count} images",
                label_dims[0],
                images.display()
            ),
        });
    }
    let size = height as usize * width as usize;
    let examples = label_bytes
        .iter()
        .enumerate()
        .map(|(i, &label)| Example {
            id: i.to_string(),
            image: ImageSource::Gray {
                file: images.to_path_buf(),
                index: i,
                width,
                height,
                pixels: pixels[i * size..(i + 1) * size].to_vec(),
            },
            label: label as usize,
            caption: None,
        })
        .collect::<Vec<_>>();
    let n = label_bytes.iter().max().map_or(0, |&m| m as usize + 1);
    Ok(LabelledSet {
        name: images.display().to_string(),
        class_names: numeric_class_names(n),
        examples,
        warnings: Vec::new(),
    })
}

/// Image `index` of an IDX images file (gzipped or not), reading the file
/// only up to it.
pub fn read_idx_image(path: &Path, index: usize) -> Result<ImageSource> {
    let file = std::fs::File::open(path).map_err(io_err(path, "open the IDX file"))?;
    let mut reader: Box<dyn Read> = match path.extension().is_some_and(|e| e == "gz") {
        true => Box::new(MultiGzDecoder::new(file)),
        false => Box::new(std::io::BufReader::new(file)),
    };
    let bad = |problem: String| DataError::Idx {
        path: path.to_path_buf(),
        problem,
    };
    let mut header = [0u8; 16];
    reader
        .read_exact(&mut header)
        .map_err(|_| bad("truncated: shorter than an images header (16 bytes)".into()))?;
    let word =
        |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let expected = u32::from_be_bytes([0, 0, UNSIGNED_BYTE, 3]);
    if word(0) != expected {
        return Err(bad(format!(
            "bad magic number 0x{:08x}: expected 0x{expected:08x} (unsigned-byte images, 3 dimensions)",
            word(0)
        )));
    }
    let (count, height, width) = (word(4) as usize, word(8), word(12));
    if index >= count {
        return Err(bad(format!("no image {index}: the file holds {count}")));
    }
    let size = height as usize * width as usize;
    let skip = (index * size) as u64;
    let skipped = std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink())
        .map_err(io_err(path, "read the IDX file"))?;
    let mut pixels = vec![0u8; size];
    if skipped != skip || reader.read_exact(&mut pixels).is_err() {
        return Err(bad(format!(
            "truncated: image {index} of {count} ends past the end of the file"
        )));
    }
    Ok(ImageSource::Gray {
        file: path.to_path_buf(),
        index,
        width,
        height,
        pixels,
    })
}

/// Reads an unsigned-byte IDX file with `ndims` dimensions: its dimensions
/// and its data, checked to be exactly as long as the dimensions say.
fn read_idx_file(path: &Path, ndims: u8) -> Result<(Vec<u32>, Vec<u8>)> {
    let file = std::fs::File::open(path).map_err(io_err(path, "open the IDX file"))?;
    let mut bytes = Vec::new();
    let gz = path.extension().is_some_and(|e| e == "gz");
    if gz {
        MultiGzDecoder::new(file).read_to_end(&mut bytes)
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes)
    }
    .map_err(io_err(
        path,
        if gz {
            "decompress the IDX file"
        } else {
            "read the IDX file"
        },
    ))?;
    let bad = |problem: String| DataError::Idx {
        path: path.to_path_buf(),
        problem,
    };
    let header_len = 4 + 4 * ndims as usize;
    if bytes.len() < 4 {
        return Err(bad(format!(
            "truncated: {} bytes, too short for the IDX magic number",
            bytes.len()
        )));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let expected = u32::from_be_bytes([0, 0, UNSIGNED_BYTE, ndims]);
    if magic != expected {
        let what = if ndims == 3 { "images" } else { "labels" };
        return Err(bad(format!(
            "bad magic number 0x{magic:08x}: expected 0x{expected:08x} (unsigned-byte {what}, {ndims} dimension{})",
            if ndims == 1 { "" } else { "s" }
        )));
    }
    if bytes.len() < header_len {
        return Err(bad(format!(
            "truncated: {} bytes, but the header of a {ndims}-dimensional IDX file takes {header_len}",
            bytes.len()
        )));
    }
    let dims: Vec<u32> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if ndims == 3 && (dims[1] == 0 || dims[2] == 0) {
        return Err(bad(format!(
            "images of {}x{} pixels: both sides must be positive",
            dims[1], dims[2]
        )));
    }
    let data_len =
        dims.iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&n| n <= usize::MAX as u64 - header_len as u64)
            .ok_or_else(|| bad(format!("dimensions {dims:?} are too large")))? as usize;
    let actual = bytes.len() - header_len;
    if actual < data_len {
        return Err(bad(format!(
            "truncated: dimensions {dims:?} need {data_len} data bytes, but the file has {actual}"
        )));
    }
    if actual > data_len {
        return Err(bad(format!(
            "{actual} data bytes, but dimensions {dims:?} describe {data_len}; the file has trailing data"
        )));
    }
    bytes.drain(..header_len);
    Ok((dims, bytes))
}
