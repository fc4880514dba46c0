//! Labels in a memory and edits that take effect without retraining, end to
//! end through the binary on real EfficientNet-Lite0 embeddings: a memory
//! built from a labelled data set spec, a class added later with
//! `memory add` (its HNSW index brought up to date), entries relabelled and
//! deleted (searches and predictions follow), a compaction, and the bad
//! inputs each refused with the file and the problem.

mod common;

use std::path::Path;

use common::{fails, ok, p};

fn memory(dir: &Path) -> ramem_store::memory::Memory {
    ramem_store::memory::Memory::open(dir).unwrap()
}

#[test]
fn a_labelled_memory_grows_and_is_edited_without_retraining() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ramem_study::fixtures::write_striped_classes(&data, 6, 2).unwrap();
    let spec = format!("folders:{}", data.display());
    let mem = tmp.path().join("mem");

    // Two of the three classes first: their training images, labelled.
    ok(&[
        "memory",
        "build",
        "--memory",
        p(&mem),
        "--input",
        &spec,
        "--skip-classes",
        "red_rows",
    ]);
    let m = memory(&mem);
    assert_eq!(m.count(), 12);
    // Every class of the data set is known, in its order, kept or not.
    assert_eq!(m.label_names(), ["blue_rows", "green_cols", "red_rows"]);
    let sources: Vec<String> = (0..12)
        .map(|i| m.metadata(i).unwrap().source.unwrap())
        .collect();
    for (i, source) in sources.iter().enumerate() {
        // The source is the image's path: DIR/train/CLASS/train_NN.png.
        let class = source.rsplit('/').nth(1).unwrap().to_string();
        assert_eq!(m.label_name(i as i64).unwrap(), Some(class.as_str()));
    }
    drop(m);
    let (info, _) = ok(&["memory", "info", "--memory", p(&mem)]);
    assert!(
        info.contains("labels:   3 classes (blue_rows, green_cols, red_rows)"),
        "{info}"
    );
    assert!(info.contains("edits:    none"), "{info}");
    ok(&["index", "build", "--memory", p(&mem)]);

    // The third class arrives later; the index follows.
    let (_, err) = ok(&[
        "memory",
        "add",
        "--memory",
        p(&mem),
        "--input",
        &spec,
        "--only-classes",
        "red_rows",
    ]);
    assert!(err.contains("added 6 rows (18 now"), "{err}");
    assert!(err.contains("6 rows inserted into its HNSW index"), "{err}");
    let (_, err) = ok(&["index", "info", "--memory", p(&mem)]);
    assert!(!err.contains("stale"), "{err}");
    // Rerunning the same add adds nothing twice.
    let (_, err) = ok(&[
        "memory",
        "add",
        "--memory",
        p(&mem),
        "--input",
        &spec,
        "--only-classes",
        "red_rows",
    ]);
    assert!(err.contains("were added already"), "{err}");
    let m = memory(&mem);
    assert_eq!(m.count(), 18);
    assert!((12..18).all(|i| m.label_name(i).unwrap() == Some("red_rows")));
    drop(m);

    // Queries: the embeddings of the red test images.
    let red = tmp.path().join("red.npy");
    ok(&[
        "embed",
        "--input",
        p(&data.join("test/red_rows")),
        "--out",
        p(&red),
    ]);
    let nn = tmp.path().join("nn.npy");
    let search = |engine: &str| {
        ok(&[
            "search",
            "--memory",
            p(&mem),
            "--queries",
            p(&red),
            "--k",
            "4",
            "--out",
            p(&nn),
            "--engine",
            engine,
        ]);
        ramem_store::read_i64_matrix(&nn).unwrap().data
    };
    let before = search("exact");
    assert!(
        before.iter().all(|&id| id >= 12),
        "red queries find the red entries: {before:?}"
    );
    assert_eq!(search("hnsw"), before);

    // Relabel two red entries by name, delete the two nearest of the first query.
    let ids = tmp.path().join("ids.txt");
    let labels = tmp.path().join("labels.txt");
    let (a, b) = {
        let mut kept = (12..18).filter(|id| *id != before[0] && *id != before[1]);
        (kept.next().unwrap(), kept.next().unwrap())
    };
    std::fs::write(&ids, format!("{a}\n{b}\n")).unwrap();
    std::fs::write(&labels, "green_cols\npurple\n").unwrap();
    ok(&[
        "memory",
        "relabel",
        "--memory",
        p(&mem),
        "--ids",
        p(&ids),
        "--labels",
        p(&labels),
    ]);
    let gone = tmp.path().join("gone.txt");
    std::fs::write(&gone, format!("{}\n{}\n", before[0], before[1])).unwrap();
    ok(&["memory", "delete", "--memory", p(&mem), "--ids", p(&gone)]);
    let m = memory(&mem);
    assert_eq!(m.label_name(a).unwrap(), Some("green_cols"));
    assert_eq!(m.label_name(b).unwrap(), Some("purple"));
    assert_eq!(m.live_count(), 16);
    drop(m);
    for engine in ["exact", "hnsw"] {
        let after = search(engine);
        assert!(
            !after.contains(&before[0]) && !after.contains(&before[1]),
            "{engine}: deleted entries are never found: {after:?}"
        );
        assert!(after.iter().all(|&id| id >= 12), "{engine}: {after:?}");
    }
    let (info, _) = ok(&["memory", "info", "--memory", p(&mem)]);
    assert!(
        info.contains("2 relabelled, 2 deleted (16 live entries"),
        "{info}"
    );

    // Bad edits change nothing and say why.
    std::fs::write(&ids, "3\n99\n").unwrap();
    std::fs::write(&labels, "blue_rows\nblue_rows\n").unwrap();
    let err = fails(&[
        "memory",
        "relabel",
        "--memory",
        p(&mem),
        "--ids",
        p(&ids),
        "--labels",
        p(&labels),
    ]);
    assert!(
        err.contains("entry 99 does not exist") && err.contains("ids.txt"),
        "{err}"
    );
    let bad_labels = tmp.path().join("bad.npy");
    ramem_store::write_i64_matrix(&bad_labels, 2, 1, &[0, 7]).unwrap();
    let err = fails(&[
        "memory",
        "relabel",
        "--memory",
        p(&mem),
        "--ids",
        p(&ids),
        "--labels",
        p(&bad_labels),
    ]);
    assert!(
        err.contains("bad.npy") && err.contains("row 1 has label 7, out of range"),
        "{err}"
    );
    std::fs::write(&ids, "3\n").unwrap();
    let err = fails(&[
        "memory",
        "relabel",
        "--memory",
        p(&mem),
        "--ids",
        p(&ids),
        "--labels",
        p(&labels),
    ]);
    assert!(err.contains("2 labels for the 1 ids"), "{err}");
    std::fs::write(&ids, "3\nseven\n").unwrap();
    let err = fails(&["memory", "delete", "--memory", p(&mem), "--ids", p(&ids)]);
    assert!(
        err.contains("ids.txt") && err.contains("line 2: \"seven\" is not an entry id"),
        "{err}"
    );
    assert_eq!(memory(&mem).live_count(), 16);

    // Compaction into a new memory: 16 entries, the edits folded in.
    let compacted = tmp.path().join("compacted");
    ok(&[
        "memory",
        "compact",
        "--memory",
        p(&mem),
        "--out",
        p(&compacted),
    ]);
    let c = memory(&compacted);
    assert_eq!(c.count(), 16);
    assert!(c.deleted().is_none());
    let map = ramem_store::read_i64_matrix(compacted.join("compacted-from.npy")).unwrap();
    let m = memory(&mem);
    for (new, &old) in map.data.iter().enumerate() {
        assert!(!m.is_deleted(old));
        assert_eq!(
            c.label_name(new as i64).unwrap(),
            m.label_name(old).unwrap()
        );
    }
}

#[test]
fn imported_labels_out_of_range_are_refused_naming_the_file_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys.npy");
    ramem_store::npy::write_f32_matrix(&keys, 3, 4, &common::rows(3, 4, 1)).unwrap();
    let labels = tmp.path().join("labels.npy");
    ramem_store::write_i64_matrix(&labels, 3, 1, &[0, -1, 2]).unwrap();
    let names = tmp.path().join("names.txt");
    std::fs::write(&names, "cat\ndog\n").unwrap();
    let mem = tmp.path().join("mem");
    let args = |mem: &Path| {
        vec![
            "memory".to_string(),
            "import".into(),
            "--memory".into(),
            p(mem).into(),
            "--keys".into(),
            p(&keys).into(),
            "--labels".into(),
            p(&labels).into(),
            "--label-names".into(),
            p(&names).into(),
        ]
    };
    let a = args(&mem);
    let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("labels.npy")
            && err.contains("row 2 has label 2, out of range: there are 2 classes"),
        "{err}"
    );
    assert!(!mem.join("shard-000000").exists(), "nothing written");
    std::fs::write(&names, "cat\ndog\nfox\n").unwrap();
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let m = memory(&mem);
    assert_eq!(m.label_names(), ["cat", "dog", "fox"]);
    let got: Vec<Option<&str>> = (0..3).map(|i| m.label_name(i).unwrap()).collect();
    assert_eq!(got, [Some("cat"), None, Some("fox")]);
}
