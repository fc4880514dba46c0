//! What the ImageNet head must say about the sample photos, shared by the
//! EfficientNet tests on each device.

/// The first four sample photos, in the order `assert_known_classes` reads.
pub const KNOWN_PHOTOS: [&str; 4] = ["chelsea.png", "coffee.png", "china.jpg", "flower.jpg"];

/// Top-1 ImageNet classes of `KNOWN_PHOTOS`, in order: a cat, espresso,
/// palace, daisy.
pub fn assert_known_classes(top: &[usize], model: &str) {
    assert!(
        (281..=285).contains(&top[0]),
        "{model}: chelsea top-1 {} is not a cat class",
        top[0]
    );
    assert_eq!(top[1], 967, "{model}: coffee should be espresso");
    assert_eq!(top[2], 698, "{model}: china.jpg should be palace");
    assert_eq!(top[3], 985, "{model}: flower.jpg should be daisy");
}
