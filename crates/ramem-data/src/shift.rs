//! A shift between training and test images: the test images of a data set
//! shown another way than the training images (greyscale, inverted, or
//! shrunk to a thumbnail and so stripped of detail), as a user's photos may
//! differ from the images a model was trained on. A data set spec asks for
//! it with `shift=grey+48px` ([`ImageShift::parse`]).

use std::fmt;

use image::imageops::FilterType;
use image::DynamicImage;

/// What is done to each test image, in this order: shrink, grey, invert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageShift {
    /// Shrink so the longer side is at most this many pixels.
    pub longest_side: Option<u32>,
    /// Keep the brightness only.
    pub grey: bool,
    /// Invert every channel (a dark drawing on light becomes light on dark).
    pub invert: bool,
}

impl ImageShift {
    /// `grey`, `invert` and `Npx` joined by `+` (`grey+48px`); `None` with
    /// the problem for anything else.
    pub fn parse(text: &str) -> std::result::Result<ImageShift, String> {
        let mut shift = ImageShift::default();
        for part in text.split('+') {
            match part {
                "grey" | "gray" => shift.grey = true,
                "invert" => shift.invert = true,
                px => {
                    let size = px
                        .strip_suffix("px")
                        .and_then(|n| n.parse::<u32>().ok())
                        .filter(|&n| n >= 8)
                        .ok_or_else(|| {
                            format!(
                                "`{part}` is not grey, invert or a size of at least 8 pixels \
                                 (48px)"
                            )
                        })?;
                    shift.longest_side = Some(size);
                }
            }
        }
        Ok(shift)
    }

    /// `image` shifted.
    pub fn apply(&self, mut image: DynamicImage) -> DynamicImage {
        if let Some(side) = self.longest_side {
            if image.width().max(image.height()) > side {
                image = image.resize(side, side, FilterType::Triangle);
            }
        }
        if self.grey {
            // Transparency stays: a clip-art drawing keeps its outline.
            image = DynamicImage::ImageLumaA8(image.to_luma_alpha8());
        }
        if self.invert {
            image.invert();
        }
        image
    }
}

impl fmt::Display for ImageShift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(side) = self.longest_side {
            parts.push(format!("{side}px"));
        }
        if self.grey {
            parts.push("grey".into());
        }
        if self.invert {
            parts.push("invert".into());
        }
        f.write_str(&parts.join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_parses_prints_and_applies() {
        let shift = ImageShift::parse("grey+48px").unwrap();
        assert_eq!(shift.to_string(), "48px+grey");
        assert_eq!(ImageShift::parse(&shift.to_string()).unwrap(), shift);
        let red = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            200,
            100,
            image::Rgb([200, 0, 0]),
        ));
        let shifted = shift.apply(red);
        assert_eq!((shifted.width(), shifted.height()), (48, 24));
        let rgb = shifted.to_rgb8();
        let p = rgb.get_pixel(10, 10).0;
        assert!(p[0] == p[1] && p[1] == p[2] && p[0] < 200, "{p:?}");
        let inverted = ImageShift::parse("invert")
            .unwrap()
            .apply(DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                4,
                4,
                image::Rgb([10, 20, 30]),
            )));
        assert_eq!(inverted.to_rgb8().get_pixel(0, 0).0, [245, 235, 225]);
        for bad in ["blue", "4px", "grey+", "px"] {
            assert!(ImageShift::parse(bad).is_err(), "{bad}");
        }
    }
}
