//! Every reader on small files written here, and every malformed input
//! reported with the file (and line, class or sample) it concerns.

mod common;

use std::path::PathBuf;

use common::*;
use ramem_data::*;

// ---- list files ----

#[test]
fn list_file_reads_paths_with_spaces_and_last_token_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    write(&root.join("a/one.jpg"), b"x");
    write(&root.join("b/two words.jpg"), b"x");
    let list = dir.path().join("train.txt");
    write(&list, "a/one.jpg 0\n\nb/two words.jpg\t3\n");
    let set = read_list_file(&list, &root, None).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.labels(), [0, 3]);
    assert_eq!(set.examples[1].id, "b/two words.jpg");
    assert_eq!(
        set.examples[1].image,
        ImageSource::File(root.join("b/two words.jpg"))
    );
    assert_eq!(set.class_names, ["0", "1", "2", "3"]);
    let set = read_list_file(&list, &root, Some(10)).unwrap();
    assert_eq!(set.num_classes(), 10);
}

#[test]
fn list_file_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("a.jpg"), b"x");
    let list = root.join("list.txt");

    write(&list, "a.jpg 0\nmissing.jpg 1\n");
    let msg = read_list_file(&list, root, None).unwrap_err().to_string();
    assert!(msg.contains("list.txt:2"), "{msg}");
    assert!(
        msg.contains("missing.jpg") && msg.contains("does not exist"),
        "{msg}"
    );

    write(&list, "a.jpg 0\na.jpg cat\n");
    let msg = read_list_file(&list, root, None).unwrap_err().to_string();
    assert!(msg.contains("list.txt:2") && msg.contains("`cat`"), "{msg}");

    write(&list, "a.jpg 0\na.jpg 10\n");
    let msg = read_list_file(&list, root, Some(10))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("list.txt:2") && msg.contains("out of range for 10 classes"),
        "{msg}"
    );

    write(&list, "a.jpg\n");
    let msg = read_list_file(&list, root, None).unwrap_err().to_string();
    assert!(
        msg.contains("list.txt:1") && msg.contains("no label"),
        "{msg}"
    );

    write(&list, "\n \n");
    let msg = read_list_file(&list, root, None).unwrap_err().to_string();
    assert!(
        msg.contains("list.txt") && msg.contains("no `path label` lines"),
        "{msg}"
    );

    let msg = read_list_file(&root.join("nope.txt"), root, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope.txt"), "{msg}");
}

#[test]
fn class_names_file_rejects_blanks_and_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("names.txt");
    write(&path, "cat\ndog\n\n");
    assert_eq!(read_class_names(&path).unwrap(), ["cat", "dog"]);
    write(&path, "cat\n\ndog\n");
    let msg = read_class_names(&path).unwrap_err().to_string();
    assert!(
        msg.contains("names.txt:2") && msg.contains("empty"),
        "{msg}"
    );
    write(&path, "cat\ndog\ncat\n");
    let msg = read_class_names(&path).unwrap_err().to_string();
    assert!(
        msg.contains("names.txt:3") && msg.contains("repeats line 1"),
        "{msg}"
    );
}

#[test]
fn class_names_must_cover_every_label() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.jpg"), b"x");
    let list = dir.path().join("list.txt");
    write(&list, "a.jpg 2\n");
    let set = read_list_file(&list, dir.path(), None).unwrap();
    let msg = set
        .clone()
        .with_class_names(vec!["a".into(), "b".into()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("label 2 needs at least 3 class names"),
        "{msg}"
    );
    let named = set
        .with_class_names(vec!["a".into(), "b".into(), "c".into()])
        .unwrap();
    assert_eq!(named.class_names[2], "c");
}

// ---- class folders ----

#[test]
fn class_folders_are_sorted_and_nested_images_found() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("dog/b.png"), png_bytes(1));
    write(&root.join("dog/a.JPG"), b"x");
    write(&root.join("dog/notes.txt"), b"not an image");
    write(&root.join("cat/sub/c.png"), png_bytes(2));
    write(&root.join(".hidden/d.png"), b"x");
    write(&root.join("README.md"), b"ignored");
    let set = read_class_folders(root).unwrap();
    assert_eq!(set.class_names, ["cat", "dog"]);
    let ids: Vec<_> = set.examples.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["cat/sub/c.png", "dog/a.JPG", "dog/b.png"]);
    assert_eq!(set.labels(), [0, 1, 1]);
    let img = set.examples[0].image.load().unwrap();
    assert_eq!((img.width(), img.height()), (3, 2));
    // A file that is not really an image fails to decode, naming it.
    let msg = set.examples[1].image.load().unwrap_err().to_string();
    assert!(msg.contains("a.JPG"), "{msg}");
}

#[test]
fn class_folders_errors_name_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let msg = read_class_folders(root).unwrap_err().to_string();
    assert!(msg.contains("no class folders"), "{msg}");
    write(&root.join("cat/a.png"), b"x");
    write(&root.join("dog/readme.txt"), b"x");
    let msg = read_class_folders(root).unwrap_err().to_string();
    assert!(msg.contains("dog") && msg.contains("no images"), "{msg}");
}

// ---- IDX ----

#[test]
fn idx_directory_plain_and_gzipped() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_idx_dir(dir.path(), gz);
        let data = read_idx(dir.path(), None).unwrap();
        assert_eq!(data.train.len(), 6);
        assert_eq!(data.test.len(), 3);
        assert_eq!(data.train.labels(), [0, 1, 2, 0, 1, 2]);
        assert_eq!(data.test.labels(), [2, 1, 0]);
        assert_eq!(data.class_names(), ["0", "1", "2"]);
        assert_eq!(data.test.class_names, data.train.class_names);
        assert_eq!(data.train.examples[4].id, "train#4");
        let img = data.train.examples[4].image.load().unwrap().into_luma8();
        assert_eq!(img.dimensions(), (5, 4));
        assert!(img.pixels().all(|p| p.0 == [4]));
        let what = data.test.examples[2].image.describe();
        assert!(
            what.ends_with("t10k-images-idx3-ubyte#2") || what.ends_with(".gz#2"),
            "{what}"
        );
    }
}

#[test]
fn idx_class_names_from_file_or_caller() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dir(dir.path(), false);
    write(&dir.path().join("class_names.txt"), "zero\none\ntwo\n");
    let data = read_idx(dir.path(), None).unwrap();
    assert_eq!(data.class_names(), ["zero", "one", "two"]);
    let data = read_idx(
        dir.path(),
        Some(vec!["a".into(), "b".into(), "c".into(), "d".into()]),
    )
    .unwrap();
    assert_eq!(data.test.class_names, ["a", "b", "c", "d"]);
    let msg = read_idx(dir.path(), Some(vec!["a".into()]))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("needs at least 3 class names"), "{msg}");
}

#[test]
fn idx_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_idx_dir(d, false);
    let images = d.join("train-images-idx3-ubyte");

    // Truncated data.
    let mut bytes = idx_images(6, 4, 5);
    bytes.truncate(bytes.len() - 7);
    write(&images, &bytes);
    let msg = read_idx(d, None).unwrap_err().to_string();
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );

    // Truncated header.
    write(&images, &idx_images(6, 4, 5)[..9]);
    let msg = read_idx(d, None).unwrap_err().to_string();
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("truncated"),
        "{msg}"
    );

    // Trailing data.
    let mut bytes = idx_images(6, 4, 5);
    bytes.push(0);
    write(&images, &bytes);
    let msg = read_idx(d, None).unwrap_err().to_string();
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("trailing"),
        "{msg}"
    );

    // Bad magic: a labels file where images belong.
    write(&images, idx_labels(&[0, 1]));
    let msg = read_idx(d, None).unwrap_err().to_string();
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("bad magic number 0x00000801"),
        "{msg}"
    );

    // Counts that disagree.
    write(&images, idx_images(5, 4, 5));
    let msg = read_idx(d, None).unwrap_err().to_string();
    assert!(
        msg.contains("train-labels-idx1-ubyte")
            && msg.contains("6 labels")
            && msg.contains("5 images"),
        "{msg}"
    );

    // A truncated gzip stream.
    std::fs::remove_file(&images).unwrap();
    let gz = gzip(&idx_images(6, 4, 5));
    write(&d.join("train-images-idx3-ubyte.gz"), &gz[..gz.len() / 2]);
    let msg = read_idx(d, None).unwrap_err().to_string();
    assert!(
        msg.contains("train-images-idx3-ubyte.gz") && msg.contains("decompress"),
        "{msg}"
    );

    // A missing file.
    std::fs::remove_file(d.join("train-images-idx3-ubyte.gz")).unwrap();
    let msg = read_idx(d, None).unwrap_err().to_string();
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
}

// ---- Open Clip Art ----

#[test]
fn openclipart_categories_captions_and_min_count() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (path, title, tags) in [
        (
            "animals/birds/owl",
            "Owl",
            vec!["bird", "night", "", "bird"],
        ),
        ("animals/birds/duck", "Duck &amp; pond", vec![]),
        ("animals/cat", "Cat", vec!["pet"]),
        ("animals/dog", "", vec!["pet", "dog"]),
        ("food/apple", "Apple", vec!["fruit"]),
    ] {
        write(&root.join(format!("png/{path}.png")), png_bytes(9));
        write(&root.join(format!("svg/{path}.svg")), svg(title, &tags));
    }
    // A second image in animals, and an unreadable SVG for it.
    write(&root.join("png/animals/broken.png"), png_bytes(9));
    write(
        &root.join("svg/animals/broken.svg"),
        "<svg><metadata><dc:title>x</svg>",
    );
    // One without an SVG at all, and one without a category.
    write(&root.join("png/food/pear.png"), png_bytes(9));
    write(&root.join("png/top.png"), png_bytes(9));
    // A symbolic link filing an image under a second category is skipped.
    #[cfg(unix)]
    std::os::unix::fs::symlink("../animals/cat.png", root.join("png/food/cat.png")).unwrap();

    let set = read_openclipart(root, 1).unwrap();
    assert_eq!(set.class_names, ["animals", "animals/birds", "food"]);
    let by_id = |id: &str| set.examples.iter().find(|e| e.id == id).unwrap();
    assert_eq!(
        by_id("animals/birds/owl.png").caption.as_deref(),
        Some("Owl. tags: bird, night")
    );
    assert_eq!(
        by_id("animals/birds/duck.png").caption.as_deref(),
        Some("Duck & pond")
    );
    assert_eq!(
        by_id("animals/dog.png").caption.as_deref(),
        Some("tags: pet, dog")
    );
    assert_eq!(by_id("animals/birds/owl.png").label, 1);
    assert_eq!(by_id("animals/broken.png").caption, None);
    assert_eq!(by_id("food/pear.png").caption, None);
    let ids: Vec<_> = set.examples.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "animals/broken.png",
            "animals/cat.png",
            "animals/dog.png",
            "animals/birds/duck.png",
            "animals/birds/owl.png",
            "food/apple.png",
            "food/pear.png"
        ]
    );
    let warnings = set.warnings.join("\n");
    assert!(warnings.contains("broken.svg: malformed SVG"), "{warnings}");
    assert!(warnings.contains("pear.svg: no SVG"), "{warnings}");
    assert!(warnings.contains("top.png"), "{warnings}");
    assert_eq!(set.warnings.len(), 3, "{warnings}");

    let set = read_openclipart(root, 3).unwrap();
    assert_eq!(set.class_names, ["animals"]);
    assert_eq!(set.len(), 3);
    let msg = read_openclipart(root, 4).unwrap_err().to_string();
    assert!(msg.contains("png") && msg.contains("at least 4"), "{msg}");
    let msg = read_openclipart(&root.join("nope"), 1)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope/png"), "{msg}");
}

#[test]
fn svg_caption_skips_agent_titles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.svg");
    write(&path, svg("", &[]));
    assert_eq!(read_svg_caption(&path).unwrap(), None);
    write(&path, svg("  A   spaced\n title. ", &["x &lt;y&gt;"]));
    assert_eq!(
        read_svg_caption(&path).unwrap().as_deref(),
        Some("A spaced title. tags: x <y>")
    );
    write(&path, "<svg><metadata>");
    let msg = read_svg_caption(&path).unwrap_err().to_string();
    assert!(msg.contains("a.svg") && msg.contains("malformed"), "{msg}");
}

// ---- webdataset ----

#[test]
fn webdataset_groups_members_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("shard-0.tar");
    write_tar(
        &shard,
        &[
            ("0000.jpg", b"not decoded".to_vec()),
            ("0000.cls", b"2\n".to_vec()),
            ("0000.txt", b" a caption \n".to_vec()),
            ("sub/0001.png", png_bytes(5)),
            ("sub/0001.jpg.json", b"{}".to_vec()),
            ("sub/0001.cls", b"0".to_vec()),
        ],
    );
    let set = read_webdataset(std::slice::from_ref(&shard)).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.labels(), [2, 0]);
    assert_eq!(set.class_names, ["0", "1", "2"]);
    assert_eq!(set.examples[0].caption.as_deref(), Some("a caption"));
    assert_eq!(set.examples[1].caption, None);
    assert!(set.examples[1].id.ends_with("shard-0.tar#sub/0001"));
    let ImageSource::TarMember(member) = &set.examples[0].image else {
        panic!("expected a tar member");
    };
    assert!(member.describe().ends_with("shard-0.tar#0000.jpg"));
    assert_eq!(member.read().unwrap(), b"not decoded");
    assert_eq!(set.examples[1].image.load().unwrap().width(), 3);
    let msg = set.examples[0].image.load().unwrap_err().to_string();
    assert!(msg.contains("shard-0.tar#0000.jpg"), "{msg}");
}

#[test]
fn webdataset_errors_name_shard_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("s.tar");
    write_tar(
        &shard,
        &[("0007.jpg", vec![1]), ("0007.txt", b"x".to_vec())],
    );
    let msg = read_webdataset(std::slice::from_ref(&shard))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("s.tar") && msg.contains("sample 0007") && msg.contains(".cls"),
        "{msg}"
    );

    write_tar(
        &shard,
        &[("0008.jpg", vec![1]), ("0008.cls", b"dog".to_vec())],
    );
    let msg = read_webdataset(std::slice::from_ref(&shard))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("sample 0008") && msg.contains("`dog`"),
        "{msg}"
    );

    write_tar(&shard, &[("0009.cls", b"1".to_vec())]);
    let msg = read_webdataset(std::slice::from_ref(&shard))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("sample 0009") && msg.contains("no image"),
        "{msg}"
    );

    write(
        &shard,
        b"this is not a tar file, and it is long enough to have a header of sorts...".repeat(10),
    );
    let err = read_webdataset(std::slice::from_ref(&shard));
    assert!(err.unwrap_err().to_string().contains("s.tar"));

    let msg = read_webdataset(&[PathBuf::from("/nonexistent/x.tar")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("/nonexistent/x.tar"), "{msg}");
}

#[test]
fn openclipart_keeps_at_most_max_per_class_and_shifts_only_the_test_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // 30 images of one class, 4 of another.
    for i in 0..30 {
        write(&root.join(format!("png/stars/s{i:02}.png")), png_bytes(16));
    }
    for i in 0..4 {
        write(&root.join(format!("png/moons/m{i}.png")), png_bytes(16));
    }
    let load = |options: &str| {
        parse_dataset_spec(&format!("openclipart:{};test=0.3{options}", root.display()))
            .unwrap()
            .load()
            .unwrap()
    };
    let capped = load(";max=10;shift=8px+grey");
    let count =
        |set: &LabelledSet, class: usize| set.labels().iter().filter(|&&l| l == class).count();
    let stars = capped
        .class_names()
        .iter()
        .position(|n| n == "stars")
        .unwrap();
    assert_eq!(count(&capped.train, stars) + count(&capped.test, stars), 10);
    assert_eq!(capped.train.len() + capped.test.len(), 14);
    // The same draw every time, and another with another seed.
    let ids = |pair: &TrainTest| -> Vec<String> {
        pair.train.examples.iter().map(|e| e.id.clone()).collect()
    };
    assert_eq!(ids(&capped), ids(&load(";max=10;shift=8px+grey")));
    assert_ne!(ids(&capped), ids(&load(";max=10;seed=5")));
    // Test images come shifted (another source name, so another cache
    // entry); training images as they are.
    for e in &capped.test.examples {
        let ImageSource::Shifted { shift, .. } = &e.image else {
            panic!("{:?}", e.image)
        };
        assert!(
            e.image.describe().ends_with("(8px+grey)"),
            "{}",
            e.image.describe()
        );
        let image = e.image.load().unwrap();
        assert!(image.width() <= 8 && shift.grey);
    }
    assert!(capped
        .train
        .examples
        .iter()
        .all(|e| matches!(e.image, ImageSource::File(_))));
}
