//! Where images and captions come from, read when they are needed: a file,
//! pixels held in memory, or a byte range of a tar shard.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::error::{io_err, DataError, Result};
use crate::shift::ImageShift;

/// A member of a tar archive, by byte range: read without reading the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    /// The tar file.
    pub shard: PathBuf,
    /// The member's path inside it.
    pub member: String,
    /// Where the member's data starts in the tar file, and its length.
    pub offset: u64,
    pub len: u64,
}

impl TarMember {
    /// The member's bytes.
    pub fn read(&self) -> Result<Vec<u8>> {
        let mut file =
            File::open(&self.shard).map_err(io_err(&self.shard, "open the tar shard"))?;
        file.seek(SeekFrom::Start(self.offset))
            .map_err(io_err(&self.shard, "seek in the tar shard"))?;
        let mut bytes = Vec::with_capacity(self.len as usize);
        file.take(self.len)
            .read_to_end(&mut bytes)
            .map_err(io_err(&self.shard, "read the tar shard"))?;
        if bytes.len() as u64 != self.len {
            return Err(DataError::Invalid(format!(
                "{}: truncated: member {} needs {} bytes from byte {}, the file has {}",
                self.shard.display(),
                self.member,
                self.len,
                self.offset,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// `SHARD#MEMBER`.
    pub fn describe(&self) -> String {
        format!("{}#{}", self.shard.display(), self.member)
    }
}

/// Where an example's image comes from. Nothing is decoded until
/// [`ImageSource::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image file on disk.
    File(PathBuf),
    /// 8-bit grayscale pixels held in memory, row-major (one IDX image).
    Gray {
        /// The IDX file the pixels came from.
        file: PathBuf,
        /// The image's position in that file.
        index: usize,
        width: u32,
        height: u32,
        pixels: Vec<u8>,
    },
    /// An encoded image (JPEG, PNG, WebP...) held in memory; `name` says
    /// where it came from.
    Encoded { name: String, bytes: Vec<u8> },
    /// An encoded image inside a tar shard, read when it is loaded.
    TarMember(TarMember),
    /// Another source's image with a shift applied ([`ImageShift`]): a
    /// data set's test images shown another way than its training images.
    Shifted {
        image: Box<ImageSource>,
        shift: ImageShift,
    },
}

impl ImageSource {
    /// Decodes the image.
    pub fn load(&self) -> Result<image::DynamicImage> {
        match self {
            ImageSource::File(path) => {
                let bytes = std::fs::read(path).map_err(io_err(path, "read the image"))?;
                decode_image(&bytes, &self.describe())
            }
            ImageSource::Gray {
                width,
                height,
                pixels,
                ..
            } => image::GrayImage::from_raw(*width, *height, pixels.clone())
                .map(image::DynamicImage::ImageLuma8)
                .ok_or_else(|| {
                    DataError::Invalid(format!(
                        "{}: {} pixels do not make a {width}x{height} image",
                        self.describe(),
                        pixels.len()
                    ))
                }),
            ImageSource::Encoded { bytes, .. } => decode_image(bytes, &self.describe()),
            ImageSource::TarMember(member) => decode_image(&member.read()?, &self.describe()),
            ImageSource::Shifted { image, shift } => Ok(shift.apply(image.load()?)),
        }
    }

    /// The image a [`ImageSource::describe`] text names (a memory entry's
    /// `source`): an image file, an IDX image (`IDXFILE#INDEX`) or a tar
    /// shard's member (`SHARD#MEMBER`). `None` when it names nothing
    /// readable here (a URL, a file since moved); an error when it names a
    /// file that cannot be read as what it says.
    pub fn from_description(described: &str) -> Result<Option<ImageSource>> {
        let path = std::path::Path::new(described);
        if path.is_file() {
            return Ok(Some(ImageSource::File(path.to_path_buf())));
        }
        let Some((file, inner)) = described.rsplit_once('#') else {
            return Ok(None);
        };
        let file = std::path::Path::new(file);
        if !file.is_file() || inner.is_empty() {
            return Ok(None);
        }
        let is_tar = file.extension().is_some_and(|e| e == "tar");
        match (is_tar, inner.parse::<usize>()) {
            (false, Ok(index)) => crate::idx::read_idx_image(file, index).map(Some),
            (true, _) => {
                let (samples, _) = crate::webdataset::scan_shard(file)?;
                Ok(samples
                    .into_iter()
                    .flat_map(|s| s.image)
                    .find(|m| m.member == inner)
                    .map(ImageSource::TarMember))
            }
            (false, Err(_)) => Ok(None),
        }
    }

    /// Where the image comes from, for messages: a path, `IDXFILE#INDEX`, or
    /// `SHARD#MEMBER`.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File(path) => path.display().to_string(),
            ImageSource::Gray { file, index, .. } => format!("{}#{index}", file.display()),
            ImageSource::Encoded { name, .. } => name.clone(),
            ImageSource::TarMember(member) => member.describe(),
            ImageSource::Shifted { image, shift } => format!("{} ({shift})", image.describe()),
        }
    }
}

/// The format of an encoded image, from its content; an empty or
/// unrecognised one is an error naming `what`.
fn image_format(bytes: &[u8], what: &str) -> Result<image::ImageFormat> {
    if bytes.is_empty() {
        return Err(DataError::Invalid(format!("{what}: empty file (0 bytes)")));
    }
    image::guess_format(bytes).map_err(|_| {
        DataError::Invalid(format!(
            "{what}: unsupported or unrecognised image format (supported: PNG, JPEG, GIF, BMP, \
             TIFF, WebP)"
        ))
    })
}

/// Decodes an encoded image (format from its content, not its name); `what`
/// names it in errors, which tell an empty file, an unrecognised format and
/// a corrupt image apart.
pub fn decode_image(bytes: &[u8], what: &str) -> Result<image::DynamicImage> {
    let format = image_format(bytes, what)?;
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The decoder fills what is missing with grey and says nothing.
        return Err(DataError::Invalid(format!(
            "{what}: truncated JPEG (the data ends before the end-of-image marker)"
        )));
    }
    image::load_from_memory_with_format(bytes, format).map_err(|error| DataError::Image {
        what: what.to_string(),
        format: format!("{format:?}"),
        error,
    })
}

/// The width and height an encoded image declares, read from its header
/// without decoding it: a server refuses an image too large to decode
/// (a pixel bomb) before decoding it. `what` names it in errors.
pub fn image_dimensions(bytes: &[u8], what: &str) -> Result<(u32, u32)> {
    let format = image_format(bytes, what)?;
    image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|error| DataError::Image {
            what: what.to_string(),
            format: format!("{format:?}"),
            error,
        })
}

/// Whether a JPEG's last scan is followed by the end-of-image marker
/// (`FF D9`). Neither that marker nor a start-of-scan (`FF DA`) can occur
/// inside entropy-coded data (a data byte `FF` is always followed by `00`),
/// so a file cut anywhere after its last scan began has no marker after it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let marker = |code: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == code);
    match (marker(0xDA), marker(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        (None, Some(_)) => true,
        _ => false,
    }
}

/// Where a caption comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSource {
    /// Text held in memory (a caption from a table).
    Inline(String),
    /// A text file (a sidecar `x.txt` next to `x.jpg`).
    File(PathBuf),
    /// A member of a tar shard (`KEY.txt`).
    TarMember(TarMember),
}

impl TextSource {
    /// The whole text; text that is not UTF-8 is an error naming its source.
    pub fn read(&self) -> Result<String> {
        let bytes = match self {
            TextSource::Inline(text) => return Ok(text.clone()),
            TextSource::File(path) => {
                std::fs::read(path).map_err(io_err(path, "read the caption"))?
            }
            TextSource::TarMember(member) => member.read()?,
        };
        let text = String::from_utf8(bytes).map_err(|_| {
            DataError::Invalid(format!(
                "the caption is not UTF-8 text ({})",
                self.describe()
            ))
        })?;
        Ok(match self {
            TextSource::File(_) => without_translations(text),
            _ => text,
        })
    }

    /// Where the text comes from, for messages.
    pub fn describe(&self) -> String {
        match self {
            TextSource::Inline(_) => "a caption from the input table".to_string(),
            TextSource::File(path) => path.display().to_string(),
            TextSource::TarMember(member) => member.describe(),
        }
    }
}

/// A sidecar caption without the translations that follow it in Tux
/// Paint's stamp descriptions: the lines before the first `LANG.utf8=...`
/// line (`fr.utf8=Un canard.`, `pt_BR.utf8=...`).
fn without_translations(text: String) -> String {
    let is_translation = |line: &str| {
        line.split_once(".utf8=").is_some_and(|(lang, _)| {
            !lang.is_empty()
                && lang.len() <= 12
                && lang
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
        })
    };
    match text.lines().position(is_translation) {
        Some(first) => text.lines().take(first).collect::<Vec<_>>().join("\n"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_caption_keeps_the_text_before_its_translations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duck.txt");
        std::fs::write(&path, "A duck.\nfr.utf8=Un canard.\npt_BR.utf8=Um pato.\n").unwrap();
        assert_eq!(TextSource::File(path.clone()).read().unwrap(), "A duck.");
        std::fs::write(&path, "A duck, swimming. ratio 2.utf8 is no language\n").unwrap();
        assert!(TextSource::File(path).read().unwrap().contains("swimming"));
    }

    fn jpeg() -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 8, y as u8 * 10, 90]));
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        bytes
    }

    #[test]
    fn a_truncated_jpeg_is_an_error_and_a_whole_one_decodes() {
        let whole = jpeg();
        assert_eq!(decode_image(&whole, "whole.jpg").unwrap().width(), 32);
        // Trailing bytes after the end marker (some cameras add them) are fine.
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"extra");
        decode_image(&trailing, "trailing.jpg").unwrap();
        for cut in [whole.len() - 2, whole.len() * 2 / 3] {
            let err = decode_image(&whole[..cut], "cut.jpg")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cut.jpg") && err.contains("truncated JPEG"),
                "{err}"
            );
        }
    }

    #[test]
    fn dimensions_come_from_the_header_alone() {
        let whole = jpeg();
        assert_eq!(image_dimensions(&whole, "a.jpg").unwrap(), (32, 24));
        // An image whose pixel data is cut short still says its size.
        let mut png = Vec::new();
        image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(
            image_dimensions(&png[..png.len() / 2], "a.png").unwrap(),
            (300, 200)
        );
        for (bytes, expected) in [(&b""[..], "empty file"), (b"not an image", "unrecognised")] {
            let err = image_dimensions(bytes, "x").unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_described_source_names_its_image_again() {
        let dir = tempfile::tempdir().unwrap();
        // A file.
        let file = dir.path().join("a.jpg");
        std::fs::write(&file, jpeg()).unwrap();
        let source = ImageSource::File(file.clone());
        assert_eq!(
            ImageSource::from_description(&source.describe()).unwrap(),
            Some(source)
        );
        // An IDX image: 3 images of 2 x 2 pixels.
        let idx = dir.path().join("images-idx3-ubyte");
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2];
        bytes.extend(0u8..12);
        std::fs::write(&idx, &bytes).unwrap();
        let gray = ImageSource::from_description(&format!("{}#2", idx.display()))
            .unwrap()
            .unwrap();
        match &gray {
            ImageSource::Gray { pixels, index, .. } => {
                assert_eq!((pixels.as_slice(), *index), (&[8u8, 9, 10, 11][..], 2))
            }
            other => panic!("not an IDX image: {other:?}"),
        }
        assert_eq!(gray.describe(), format!("{}#2", idx.display()));
        let err = ImageSource::from_description(&format!("{}#3", idx.display()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no image 3") && err.contains("holds 3"),
            "{err}"
        );
        // A tar member.
        let shard = dir.path().join("shard.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&shard).unwrap());
        let image = jpeg();
        let mut header = tar::Header::new_gnu();
        header.set_size(image.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "000001.jpg", image.as_slice())
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        let member = ImageSource::from_description(&format!("{}#000001.jpg", shard.display()))
            .unwrap()
            .unwrap();
        assert_eq!(member.load().unwrap().width(), 32);
        // What names nothing readable here.
        for nothing in [
            "https://example.org/a.jpg".to_string(),
            format!("{}#nothing.jpg", shard.display()),
            dir.path().join("moved.jpg").display().to_string(),
        ] {
            assert_eq!(ImageSource::from_description(&nothing).unwrap(), None);
        }
    }
}
