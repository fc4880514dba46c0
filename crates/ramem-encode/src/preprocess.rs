//! Image decoding and preprocessing, exactly as each encoder was trained.
//!
//! EfficientNet-Lite: resize the short side to `resolution / 0.875` (bicubic),
//! centre-crop `resolution x resolution`, scale pixels as `(p - 127) / 128`.
//! Grey images are replicated to RGB; images with transparency are composited
//! onto white (clip art is usually drawn on a transparent background, and its
//! hidden colour channels are arbitrary).

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

/// How to turn a decoded image into an encoder's input tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessSpec {
    /// Side of the square crop fed to the network.
    pub crop: u32,
    /// Short side after resizing, before cropping.
    pub resize_short: u32,
    /// Per-channel mean and standard deviation, on the 0..255 pixel scale.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PreprocessSpec {
    /// EfficientNet-Lite: crop fraction 0.875, `(p - 127) / 128`.
    pub fn efficientnet_lite(resolution: u32) -> Self {
        Self {
            crop: resolution,
            resize_short: (resolution as f32 / 0.875).round() as u32,
            mean: [127.0; 3],
            std: [128.0; 3],
        }
    }

    /// CLIP-style: resize the short side to the crop size, centre-crop, normalise
    /// with `mean`/`std` given on the 0..1 scale.
    pub fn clip(size: u32, mean01: [f32; 3], std01: [f32; 3]) -> Self {
        Self {
            crop: size,
            resize_short: size,
            mean: mean01.map(|m| m * 255.0),
            std: std01.map(|s| s * 255.0),
        }
    }

    /// Floats per preprocessed image.
    pub fn len(&self) -> usize {
        3 * (self.crop as usize) * (self.crop as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.crop == 0
    }
}

/// Decodes an image file, naming the file and the problem on failure. The
/// format is recognised from the file's content, not its extension (the one
/// decoder every input goes through: [`ramem_data::decode_image`]).
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    Ok(ramem_data::ImageSource::File(path.to_path_buf()).load()?)
}

/// Converts to 8-bit RGB: grey is replicated, transparency composited onto white.
pub fn to_rgb(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = src[3] as f32 / 255.0;
        for ch in 0..3 {
            dst[ch] = (src[ch] as f32 * alpha + 255.0 * (1.0 - alpha)).round() as u8;
        }
    }
    rgb
}

/// Resizes the short side to `spec.resize_short` (bicubic) and centre-crops
/// `spec.crop x spec.crop`.
pub fn resize_and_crop(image: &RgbImage, spec: &PreprocessSpec) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        bail!("image has no pixels ({w}x{h})");
    }
    let short = w.min(h) as f64;
    let scale = spec.resize_short as f64 / short;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(spec.crop),
        ((h as f64 * scale).round() as u32).max(spec.crop),
    );
    let resized = if (nw, nh) == (w, h) {
        image.clone()
    } else {
        image::imageops::resize(image, nw, nh, FilterType::CatmullRom)
    };
    let left = (nw - spec.crop) / 2;
    let top = (nh - spec.crop) / 2;
    Ok(image::imageops::crop_imm(&resized, left, top, spec.crop, spec.crop).to_image())
}

/// Writes an RGB image of `crop x crop` as normalised CHW floats into `out`.
pub fn normalise_chw(image: &RgbImage, spec: &PreprocessSpec, out: &mut [f32]) {
    let plane = (image.width() * image.height()) as usize;
    debug_assert_eq!(out.len(), 3 * plane);
    for (i, px) in image.pixels().enumerate() {
        for ch in 0..3 {
            out[ch * plane + i] = (px[ch] as f32 - spec.mean[ch]) / spec.std[ch];
        }
    }
}

/// Full pipeline for one decoded image: RGB, resize, crop, normalise (CHW).
pub fn preprocess(image: &DynamicImage, spec: &PreprocessSpec) -> Result<Vec<f32>> {
    let mut out = vec![0f32; spec.len()];
    preprocess_into(image, spec, &mut out)?;
    Ok(out)
}

/// [`preprocess`] into `out` (`spec.len()` floats).
pub fn preprocess_into(image: &DynamicImage, spec: &PreprocessSpec, out: &mut [f32]) -> Result<()> {
    let cropped = resize_and_crop(&to_rgb(image), spec)?;
    normalise_chw(&cropped, spec, out);
    Ok(())
}

/// Decodes and preprocesses an image file.
pub fn preprocess_file(path: &Path, spec: &PreprocessSpec) -> Result<Vec<f32>> {
    let image = load_image(path)?;
    preprocess(&image, spec).with_context(|| format!("{}: cannot preprocess", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgba, RgbaImage};

    #[test]
    fn efficientnet_spec_values() {
        let s = PreprocessSpec::efficientnet_lite(224);
        assert_eq!((s.crop, s.resize_short), (224, 256));
        assert_eq!(PreprocessSpec::efficientnet_lite(240).resize_short, 274);
        assert_eq!(PreprocessSpec::efficientnet_lite(260).resize_short, 297);
    }

    #[test]
    fn grey_is_replicated_and_scaled() {
        let grey = DynamicImage::ImageLuma8(GrayImage::from_pixel(300, 400, Luma([255])));
        let spec = PreprocessSpec::efficientnet_lite(224);
        let x = preprocess(&grey, &spec).unwrap();
        assert_eq!(x.len(), 3 * 224 * 224);
        assert!(
            x.iter().all(|&v| (v - 1.0).abs() < 1e-6),
            "255 -> (255-127)/128 = 1"
        );
    }

    #[test]
    fn transparent_pixels_become_white() {
        let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 0])));
        assert!(to_rgb(&img).pixels().all(|p| p.0 == [255, 255, 255]));
    }

    #[test]
    fn centre_crop_of_wide_image() {
        // Left half black, right half white, 512x256: resize to 512x256 (no-op
        // at short side 256), crop the middle 224 columns: half black, half white.
        let mut img = RgbImage::new(512, 256);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if x < 256 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            };
        }
        let out = resize_and_crop(&img, &PreprocessSpec::efficientnet_lite(224)).unwrap();
        assert_eq!(out.dimensions(), (224, 224));
        assert_eq!(out.get_pixel(111, 100).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(112, 100).0, [255, 255, 255]);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let e = format!("{:#}", load_image(&empty).unwrap_err());
        assert!(e.contains("empty.jpg") && e.contains("empty file"), "{e}");

        let text = dir.path().join("notes.png");
        std::fs::write(&text, b"this is not an image at all").unwrap();
        let e = format!("{:#}", load_image(&text).unwrap_err());
        assert!(e.contains("notes.png") && e.contains("unrecognised"), "{e}");

        let corrupt = dir.path().join("corrupt.png");
        let mut png = Vec::new();
        RgbImage::new(8, 8)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        std::fs::write(&corrupt, &png[..png.len() / 2]).unwrap();
        let e = format!("{:#}", load_image(&corrupt).unwrap_err());
        assert!(e.contains("corrupt.png") && e.contains("corrupt"), "{e}");
    }
}
