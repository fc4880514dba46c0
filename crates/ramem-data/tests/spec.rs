//! Dataset specs: parsing, errors naming the spec, and loading each kind.

mod common;

use std::path::PathBuf;

use common::*;
use ramem_data::*;

#[test]
fn specs_parse_and_print_back() {
    for spec in [
        "idx:/data/fmnist;names=fashion-mnist",
        "list:/l/train.txt,/l/test.txt@/imgs;names=/l/names.txt;classes=1000",
        "folders:/data/flowers;test=0.25;seed=3",
        "openclipart:/usr/share/openclipart;min=10;test=0.2;seed=0",
        "openclipart:/oc;min=3;max=29;shift=48px+grey;test=0.3;seed=0",
        "wds:/s/a.tar,/s/b-*.tar|/s/test.tar;names=/n.txt;test=0.2;seed=0",
    ] {
        let parsed = parse_dataset_spec(spec).unwrap();
        assert_eq!(parsed.to_string(), spec);
        assert_eq!(parse_dataset_spec(&parsed.to_string()).unwrap(), parsed);
    }
    assert_eq!(
        parse_dataset_spec("list:dir/train.txt,dir/test.txt").unwrap(),
        DatasetSpec::List {
            train: "dir/train.txt".into(),
            test: "dir/test.txt".into(),
            root: "dir".into(),
            class_names: None,
            num_classes: None,
        }
    );
    assert_eq!(
        parse_dataset_spec("openclipart:/oc").unwrap(),
        DatasetSpec::OpenClipArt {
            dir: "/oc".into(),
            min_images_per_class: 1,
            max_images_per_class: None,
            split: Split {
                test_fraction: 0.2,
                seed: 0
            },
            shift: None,
        }
    );
    let spec: DatasetSpec = "idx:/x".parse().unwrap();
    assert_eq!(
        spec,
        DatasetSpec::Idx {
            dir: "/x".into(),
            class_names: None
        }
    );
}

#[test]
fn bad_specs_name_the_spec_and_problem() {
    for (spec, problem) in [
        ("/just/a/path", "expected KIND:BODY"),
        ("zip:/x", "unknown kind `zip`"),
        ("idx:", "nothing after `idx:`"),
        ("idx:/x;min=3", "option `min` does not apply to idx"),
        ("idx:/x;names", "option `names` is not key=value"),
        ("folders:/x;seed=1;seed=2", "option `seed` is given twice"),
        ("folders:/x;test=1.5", "test=1.5"),
        ("openclipart:/x;min=lots", "min=lots"),
        ("openclipart:/x;max=0", "max=0"),
        ("openclipart:/x;shift=sepia", "shift=sepia"),
        ("list:/only/one.txt", "TRAIN_LIST,TEST_LIST"),
        ("wds:a.tar,,b.tar", "empty shard name"),
    ] {
        let msg = parse_dataset_spec(spec).unwrap_err().to_string();
        assert!(msg.contains(&format!("`{spec}`")), "{msg}");
        assert!(msg.contains(problem), "{spec}: {msg}");
    }
}

#[test]
fn load_idx_and_list() {
    let dir = tempfile::tempdir().unwrap();
    write_idx_dir(dir.path(), true);
    let spec = parse_dataset_spec(&format!("idx:{}", dir.path().display())).unwrap();
    let data = load(&spec).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (6, 3));

    let root = dir.path().join("imgs");
    write(&root.join("a.png"), png_bytes(1));
    write(&root.join("b.png"), png_bytes(2));
    write(&dir.path().join("train.txt"), "a.png 0\nb.png 1\n");
    write(&dir.path().join("test.txt"), "b.png 2\n");
    write(&dir.path().join("names.txt"), "x\ny\nz\n");
    let d = dir.path().display();
    let data = parse_dataset_spec(&format!(
        "list:{d}/train.txt,{d}/test.txt@{d}/imgs;names={d}/names.txt"
    ))
    .unwrap()
    .load()
    .unwrap();
    assert_eq!(data.train.class_names, ["x", "y", "z"]);
    assert_eq!(data.test.class_names, ["x", "y", "z"]);
    assert_eq!(data.test.labels(), [2]);

    // Without names, both sets get numeric names covering every label.
    let data =
        load(&parse_dataset_spec(&format!("list:{d}/train.txt,{d}/test.txt@{d}/imgs")).unwrap())
            .unwrap();
    assert_eq!(data.train.class_names, ["0", "1", "2"]);

    // A load error names the spec and the file.
    let spec = format!("list:{d}/train.txt,{d}/test.txt@{d}/imgs;classes=2");
    let msg = load(&parse_dataset_spec(&spec).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("dataset `list:")
            && msg.contains("test.txt:1")
            && msg.contains("out of range"),
        "{msg}"
    );
}

#[test]
fn load_folders_with_and_without_a_given_split() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for class in ["ant", "bee", "cow"] {
        for i in 0..5 {
            write(&d.join(format!("single/{class}/{i}.png")), png_bytes(i));
        }
    }
    let data = load(
        &parse_dataset_spec(&format!(
            "folders:{};test=0.4;seed=7",
            d.join("single").display()
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(data.train.class_counts().unwrap(), [3, 3, 3]);
    assert_eq!(data.test.class_counts().unwrap(), [2, 2, 2]);
    assert_eq!(data.test.class_names, ["ant", "bee", "cow"]);

    write(&d.join("split/train/ant/0.png"), png_bytes(0));
    write(&d.join("split/train/bee/0.png"), png_bytes(0));
    write(&d.join("split/test/bee/1.png"), png_bytes(0));
    let spec = parse_dataset_spec(&format!("folders:{}", d.join("split").display())).unwrap();
    let data = load(&spec).unwrap();
    assert_eq!(data.train.labels(), [0, 1]);
    assert_eq!(
        data.test.labels(),
        [1],
        "test labels follow the training classes"
    );
    assert_eq!(data.test.class_names, ["ant", "bee"]);

    write(&d.join("split/test/cat/1.png"), png_bytes(0));
    let msg = load(&spec).unwrap_err().to_string();
    assert!(
        msg.contains("`cat`") && msg.contains("no counterpart"),
        "{msg}"
    );
}

#[test]
fn load_webdataset_globs_directories_and_split() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for s in 0..2 {
        let members: Vec<(String, Vec<u8>)> = (0..6)
            .flat_map(|i| {
                let key = format!("{s}{i:03}");
                [
                    (format!("{key}.png"), png_bytes(i)),
                    (format!("{key}.cls"), (i % 2).to_string().into_bytes()),
                ]
            })
            .collect();
        let members: Vec<(&str, Vec<u8>)> = members
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        write_tar(&d.join(format!("train/shard-{s}.tar")), &members);
    }
    write_tar(
        &d.join("test.tar"),
        &[("t.png", png_bytes(0)), ("t.cls", b"1".to_vec())],
    );

    let data = load(
        &parse_dataset_spec(&format!(
            "wds:{}/train/shard-*.tar|{}/test.tar",
            d.display(),
            d.display()
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!((data.train.len(), data.test.len()), (12, 1));
    assert_eq!(data.test.class_names, ["0", "1"]);

    let data =
        load(&parse_dataset_spec(&format!("wds:{}/train;test=0.5", d.display())).unwrap()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (6, 6));

    let msg = load(&parse_dataset_spec(&format!("wds:{}/none-*.tar", d.display())).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("dataset spec `wds:") && msg.contains("matches no file"),
        "{msg}"
    );
    let missing = PathBuf::from(d).join("missing.tar");
    let msg = load(&parse_dataset_spec(&format!("wds:{}", missing.display())).unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing.tar"), "{msg}");
}

#[test]
fn load_openclipart_splits_by_category() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..4 {
        write(&d.join(format!("png/a/{i}.png")), png_bytes(0));
        write(&d.join(format!("svg/a/{i}.svg")), svg("A", &["t"]));
    }
    write(&d.join("png/b/0.png"), png_bytes(0));
    let data =
        load(&parse_dataset_spec(&format!("openclipart:{};min=2;test=0.5", d.display())).unwrap())
            .unwrap();
    assert_eq!(data.class_names(), ["a"]);
    assert_eq!((data.train.len(), data.test.len()), (2, 2));
    assert_eq!(data.test.examples[0].caption.as_deref(), Some("A. tags: t"));
}
