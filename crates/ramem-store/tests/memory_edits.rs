//! Labels in a memory, and edits without rewriting a shard: relabels and
//! deletions committed through the manifest, refused ids changing nothing,
//! leftovers of a crash cleaned up, and compaction (resumable) folding the
//! edits into a new memory.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use ramem_store::memory::{
    compact, FloatDtype, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch,
    COMPACTION_MAP_FILE,
};

const DIM: usize = 4;

/// Entry `i` has key `[i + 1, 1, 0, 0]` and, unless `i % 4 == 3`, the label
/// `CLASSES[i % 3]`.
const CLASSES: [&str; 3] = ["cat", "dog", "fox"];

fn entry(i: usize) -> MetadataEntry {
    MetadataEntry {
        source: Some(format!("img/{i}.png")),
        caption: None,
        label: (i % 4 != 3).then(|| CLASSES[i % 3].to_string()),
    }
}

fn image_spec() -> MemorySpec {
    let mut spec = MemorySpec::new("enc", DIM, FloatDtype::F32, false);
    spec.image = Some(ramem_store::memory::ValueSpec {
        encoder: "enc".into(),
        dim: DIM,
        dtype: FloatDtype::F32,
    });
    spec
}

fn write(dir: &Path, shards: &[usize]) {
    let mut writer = MemoryWriter::create(dir, image_spec()).unwrap();
    writer
        .declare_classes(&["fox".into(), "cat".into()])
        .unwrap();
    let mut next = 0;
    for &n in shards {
        let keys: Vec<f32> = (next..next + n)
            .flat_map(|i| [i as f32 + 1.0, 1.0, 0.0, 0.0])
            .collect();
        let meta: Vec<MetadataEntry> = (next..next + n).map(entry).collect();
        writer
            .append_shard(ShardBatch {
                keys: &keys,
                image_values: Some(&keys),
                text_values: None,
                metadata: &meta,
            })
            .unwrap();
        next += n;
    }
}

fn name(memory: &Memory, id: i64) -> Option<String> {
    memory.label_name(id).unwrap().map(str::to_string)
}

#[test]
fn labels_are_stored_with_the_declared_class_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    write(&dir, &[5, 3]);
    let memory = Memory::open(&dir).unwrap();
    assert_eq!(memory.label_names(), ["fox", "cat", "dog"]);
    for i in 0..8 {
        assert_eq!(name(&memory, i as i64), entry(i).label, "entry {i}");
    }
    assert_eq!(memory.label(0).unwrap(), Some(1)); // cat
    assert_eq!(memory.label(2).unwrap(), Some(0)); // fox
    assert_eq!(memory.label(3).unwrap(), None);
    assert!(memory.manifest().shards.iter().all(|s| s.labels));
    assert_eq!(memory.manifest().version, 1, "no edits: version 1");
    // A memory without labels has none, and no labels file.
    let plain = tmp.path().join("plain");
    let mut writer = MemoryWriter::create(&plain, image_spec()).unwrap();
    let keys = [1.0, 0.0, 0.0, 0.0];
    writer
        .append_shard(ShardBatch {
            keys: &keys,
            image_values: Some(&keys),
            text_values: None,
            metadata: &[MetadataEntry::source("a")],
        })
        .unwrap();
    drop(writer);
    let plain = Memory::open(&plain).unwrap();
    assert!(plain.label_names().is_empty());
    assert_eq!(plain.label(0).unwrap(), None);
    assert!(!tmp.path().join("plain/shard-000000/labels.npy").exists());
}

#[test]
fn edits_commit_through_the_manifest_and_refusals_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    write(&dir, &[6, 6]);
    let mut writer = MemoryWriter::open_append(&dir).unwrap();
    let report = writer
        .edit(
            &[(0, Some("dog".into())), (3, Some("owl".into())), (4, None)],
            &[1, 7],
        )
        .unwrap();
    assert_eq!((report.relabeled, report.deleted), (3, 2));
    assert!(dir.join("edits-000001.json").is_file());
    // Refused: an id past the end, or relabelling a deleted entry. Nothing changes.
    let err = writer.edit(&[(2, Some("cat".into()))], &[12]).unwrap_err();
    assert!(
        err.to_string()
            .contains("entry 12 does not exist (the memory has entries 0..12)"),
        "{err}"
    );
    let err = writer.edit(&[(7, Some("cat".into()))], &[]).unwrap_err();
    assert!(err.to_string().contains("entry 7 is deleted"), "{err}");
    let report = writer.edit(&[], &[7, 8]).unwrap();
    assert_eq!((report.deleted, report.total_deleted), (1, 3));
    drop(writer);
    assert!(!dir.join("edits-000001.json").exists(), "replaced");
    assert!(
        dir.join("edits-000002.json").is_file(),
        "refused edits commit nothing"
    );

    let memory = Memory::open(&dir).unwrap();
    assert_eq!(memory.manifest().version, 2, "edits: version 2");
    assert_eq!(name(&memory, 0).as_deref(), Some("dog"));
    assert_eq!(name(&memory, 3).as_deref(), Some("owl"));
    assert_eq!(name(&memory, 4), None);
    assert_eq!(name(&memory, 2), entry(2).label, "untouched");
    assert_eq!(memory.label_names(), ["fox", "cat", "dog", "owl"]);
    for id in [1, 7, 8] {
        assert!(memory.is_deleted(id));
    }
    assert!(!memory.is_deleted(0));
    assert_eq!(memory.live_count(), 9);
    assert_eq!(memory.deleted().unwrap().len(), 3);
}

#[test]
fn a_crash_before_the_manifest_commit_leaves_the_old_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    write(&dir, &[4]);
    let mut writer = MemoryWriter::open_append(&dir).unwrap();
    writer.edit(&[], &[0]).unwrap();
    drop(writer);
    // What a writer killed between the new edits file and the manifest leaves.
    std::fs::write(
        dir.join("edits-000002.json"),
        br#"{"format":"ramem-memory-edits","version":1,"relabel":[],"delete":[0,1]}"#,
    )
    .unwrap();
    std::fs::write(dir.join(".edits-000003.json.77.0.tmp"), b"{").unwrap();
    let memory = Memory::open(&dir).unwrap();
    assert!(memory.is_deleted(0) && !memory.is_deleted(1));
    drop(memory);
    let writer = MemoryWriter::open_append(&dir).unwrap();
    drop(writer);
    assert!(!dir.join("edits-000002.json").exists());
    assert!(!dir.join(".edits-000003.json.77.0.tmp").exists());
    assert!(dir.join("edits-000001.json").exists());
    // A damaged edits file in force is an error naming it.
    std::fs::write(dir.join("edits-000001.json"), b"{\"format\":").unwrap();
    let err = Memory::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("edits-000001.json") && err.contains("not an edits file"),
        "{err}"
    );
}

#[test]
fn compaction_drops_deleted_entries_folds_relabels_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    write(&dir, &[4, 4, 4]);
    let mut writer = MemoryWriter::open_append(&dir).unwrap();
    // Shard 1 loses every entry; shard 2 one; entry 9 is relabelled.
    writer
        .edit(&[(9, Some("owl".into()))], &[4, 5, 6, 7, 10])
        .unwrap();
    drop(writer);

    // Interrupted after the first source shard...
    let out = tmp.path().join("compacted");
    let interrupted = catch_unwind(AssertUnwindSafe(|| {
        compact(&dir, &out, &mut |done, _| {
            if done == 1 {
                panic!("killed");
            }
        })
    }));
    assert!(interrupted.is_err());
    // ...then resumed.
    let report = compact(&dir, &out, &mut |_, _| {}).unwrap();
    assert_eq!(report.resumed_shards, 1);
    assert_eq!((report.rows, report.dropped), (7, 5));

    let source = Memory::open(&dir).unwrap();
    let compacted = Memory::open(&out).unwrap();
    assert_eq!(compacted.count(), 7);
    assert!(compacted.deleted().is_none() && compacted.manifest().edits.is_none());
    assert_eq!(compacted.label_names(), source.label_names());
    let map = ramem_store::read_i64_matrix(out.join(COMPACTION_MAP_FILE)).unwrap();
    assert_eq!(map.data, vec![0, 1, 2, 3, 8, 9, 11]);
    for (new, &old) in map.data.iter().enumerate() {
        let new = new as i64;
        assert_eq!(compacted.key(new).unwrap(), source.key(old).unwrap());
        assert_eq!(
            compacted
                .values(ramem_store::memory::ValueKind::Image, new)
                .unwrap(),
            source
                .values(ramem_store::memory::ValueKind::Image, old)
                .unwrap()
        );
        assert_eq!(name(&compacted, new), name(&source, old));
        assert_eq!(
            compacted.metadata(new).unwrap().source,
            source.metadata(old).unwrap().source
        );
    }
    assert_eq!(name(&compacted, 5).as_deref(), Some("owl"));
    // Compacting again into the finished memory is refused.
    let err = compact(&dir, &out, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("not an interrupted compaction"), "{err}");
}
