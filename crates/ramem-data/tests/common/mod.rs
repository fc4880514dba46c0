//! Helpers shared by the tests: small files in each format.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path`, creating its parent directories.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// A small valid PNG (a gray square of `value`).
pub fn png_bytes(value: u8) -> Vec<u8> {
    let img = image::GrayImage::from_pixel(3, 2, image::Luma([value]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// An IDX images file: `n` images of `h` x `w`, image `i` filled with `i`.
pub fn idx_images(n: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    for i in 0..n {
        out.extend(std::iter::repeat_n(i as u8, h * w));
    }
    out
}

/// An IDX labels file.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes a standard IDX directory (train: 6 images, test: 3), gzipped or not.
pub fn write_idx_dir(dir: &Path, gz: bool) {
    let files = [
        ("train-images-idx3-ubyte", idx_images(6, 4, 5)),
        ("train-labels-idx1-ubyte", idx_labels(&[0, 1, 2, 0, 1, 2])),
        ("t10k-images-idx3-ubyte", idx_images(3, 4, 5)),
        ("t10k-labels-idx1-ubyte", idx_labels(&[2, 1, 0])),
    ];
    for (name, bytes) in files {
        if gz {
            write(&dir.join(format!("{name}.gz")), gzip(&bytes));
        } else {
            write(&dir.join(name), bytes);
        }
    }
}

/// Writes a tar shard of `(member name, contents)`.
pub fn write_tar(path: &Path, members: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    builder.finish().unwrap();
}

/// An Open Clip Art style SVG with a title and keyword tags.
pub fn svg(title: &str, tags: &[&str]) -> String {
    let lis: String = tags
        .iter()
        .map(|t| format!("<rdf:li>{t}</rdf:li>"))
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:subject><rdf:Bag>{lis}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  <rect width="1" height="1"/>
</svg>"#
    )
}
