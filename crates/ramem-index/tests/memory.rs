//! Search over a memory directory with several shards: agrees with a brute-force
//! search over all keys at once, excludes by global id, gathers values.

use ramem_index::{retrieve, search_exact, search_memory, Keys, MemorySearchError, SearchParams};
use ramem_store::memory::{
    FloatDtype, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueKind, ValueSpec,
};

fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

const DIM: usize = 24;
const VALUE_DIM: usize = 5;

/// A memory of f32 keys (stored as given) in shards of 7, 30 and 13 rows.
fn build(dir: &std::path::Path) -> (Vec<f32>, Vec<f32>) {
    let mut spec = MemorySpec::new("test-encoder", DIM, FloatDtype::F32, false);
    spec.text = Some(ValueSpec {
        encoder: "test-text".into(),
        dim: VALUE_DIM,
        dtype: FloatDtype::F32,
    });
    let mut writer = MemoryWriter::create(dir, spec).unwrap();
    let keys = rows(50, DIM, 7);
    let values = rows(50, VALUE_DIM, 8);
    let mut start = 0;
    for n in [7, 30, 13] {
        let metadata = vec![MetadataEntry::default(); n];
        writer
            .append_shard(ShardBatch {
                keys: &keys[start * DIM..(start + n) * DIM],
                image_values: None,
                text_values: Some(&values[start * VALUE_DIM..(start + n) * VALUE_DIM]),
                metadata: &metadata,
            })
            .unwrap();
        start += n;
    }
    (keys, values)
}

#[test]
fn sharded_search_equals_one_search_over_all_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, _) = build(dir.path());
    let memory = Memory::open(dir.path()).unwrap();
    let queries = rows(20, DIM, 9);
    for k in [1, 5, 50, 60] {
        let params = SearchParams { k, exclude: None };
        let got = search_memory(&memory, &queries, DIM, &params).unwrap();
        let want = search_exact(
            &Keys::F32 {
                data: &keys,
                dim: DIM,
            },
            &queries,
            DIM,
            &params,
        )
        .unwrap();
        assert_eq!(got.ids, want.ids, "k = {k}");
        for (a, b) in got.scores.iter().zip(&want.scores) {
            assert!(a == b || (a - b).abs() < 1e-5, "k = {k}: {a} vs {b}");
        }
    }
}

#[test]
fn exclude_uses_global_ids_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, _) = build(dir.path());
    let memory = Memory::open(dir.path()).unwrap();
    // Queries are memory rows 3 (first shard), 20 (second) and 45 (third).
    let picked = [3usize, 20, 45];
    let queries: Vec<f32> = picked
        .iter()
        .flat_map(|&r| keys[r * DIM..(r + 1) * DIM].to_vec())
        .collect();
    let params = SearchParams {
        k: 4,
        exclude: Some(picked.iter().map(|&r| r as i64).collect()),
    };
    let got = search_memory(&memory, &queries, DIM, &params).unwrap();
    for (qi, &r) in picked.iter().enumerate() {
        assert!(
            !got.ids[qi * 4..(qi + 1) * 4].contains(&(r as i64)),
            "query {r} found itself"
        );
    }
    // Without the exclusion each query finds itself first.
    let plain = search_memory(
        &memory,
        &queries,
        DIM,
        &SearchParams {
            k: 1,
            exclude: None,
        },
    )
    .unwrap();
    assert_eq!(plain.ids, [3, 20, 45]);
}

#[test]
fn retrieve_gathers_the_values_of_each_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let (_, values) = build(dir.path());
    let memory = Memory::open(dir.path()).unwrap();
    let queries = rows(3, DIM, 11);
    let got = retrieve(
        &memory,
        &queries,
        DIM,
        &SearchParams {
            k: 6,
            exclude: None,
        },
        ValueKind::Text,
    )
    .unwrap();
    assert_eq!(got.value_dim, VALUE_DIM);
    for (slot, &id) in got.neighbours.ids.iter().enumerate() {
        let want = &values[id as usize * VALUE_DIM..(id as usize + 1) * VALUE_DIM];
        assert_eq!(&got.values[slot * VALUE_DIM..(slot + 1) * VALUE_DIM], want);
    }
    let e = retrieve(
        &memory,
        &queries,
        DIM,
        &SearchParams {
            k: 6,
            exclude: None,
        },
        ValueKind::Image,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("manifest.json") && e.contains("image"), "{e}");
}

#[test]
fn errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let memory = Memory::open(dir.path()).unwrap();
    let e = search_memory(
        &memory,
        &rows(2, 8, 1),
        8,
        &SearchParams {
            k: 3,
            exclude: None,
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("24") && e.to_string().contains('8'),
        "{e}"
    );
    let e = search_memory(
        &memory,
        &rows(2, DIM, 1),
        DIM,
        &SearchParams {
            k: 0,
            exclude: None,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("k must be at least 1"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    MemoryWriter::create(
        empty.path(),
        MemorySpec::new("e", DIM, FloatDtype::F16, true),
    )
    .unwrap();
    let memory = Memory::open(empty.path()).unwrap();
    let e = search_memory(
        &memory,
        &rows(1, DIM, 1),
        DIM,
        &SearchParams {
            k: 1,
            exclude: None,
        },
    )
    .unwrap_err();
    assert!(matches!(e, MemorySearchError::EmptyMemory), "{e}");
}
