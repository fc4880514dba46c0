//! The retrieval interface over a memory directory with several shards:
//! exact search agrees with a brute-force search over all keys at once and
//! excludes by global id; the neighbour cache returns what the engine found
//! and names its files by everything the result depends on; engines open by
//! name; errors are clear.

use std::sync::Arc;

use ramem_index::{
    build_memory_index, open_retriever, search_exact, Engine, ExactSearch, HnswParams, Keys,
    NeighbourCache, Neighbours, Retriever, SearchError, SearchParams,
};
use ramem_store::memory::{
    FloatDtype, Memory, MemorySpec, MemoryWriter, MetadataEntry, ShardBatch, ValueSpec,
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

fn exact(dir: &std::path::Path) -> ExactSearch {
    ExactSearch::new(Arc::new(Memory::open(dir).unwrap()))
}

#[test]
fn sharded_search_equals_one_search_over_all_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, _) = build(dir.path());
    let memory = exact(dir.path());
    assert_eq!((memory.len(), memory.dim()), (50, DIM));
    let queries = rows(20, DIM, 9);
    for k in [1, 5, 50, 60] {
        let params = SearchParams::new(k);
        let got = memory.search(&queries, DIM, &params).unwrap();
        let want = search_exact(&Keys::f32(&keys, DIM).unwrap(), &queries, DIM, &params).unwrap();
        assert_eq!(got.ids, want.ids, "k = {k}");
        for (a, b) in got.scores.iter().zip(&want.scores) {
            assert!(a == b || (a - b).abs() < 1e-5, "k = {k}: {a} vs {b}");
        }
        assert_eq!(got.padded_slots(), 20 * k.saturating_sub(50));
    }
}

#[test]
fn exclude_uses_global_ids_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, _) = build(dir.path());
    let memory = exact(dir.path());
    // Queries are memory rows 3 (first shard), 20 (second) and 45 (third).
    let picked = [3usize, 20, 45];
    let queries: Vec<f32> = picked
        .iter()
        .flat_map(|&r| keys[r * DIM..(r + 1) * DIM].to_vec())
        .collect();
    let params = SearchParams::new(4).excluding(picked.iter().map(|&r| r as i64).collect());
    let got = memory.search(&queries, DIM, &params).unwrap();
    for (qi, &r) in picked.iter().enumerate() {
        assert!(
            !got.ids[qi * 4..(qi + 1) * 4].contains(&(r as i64)),
            "query {r} found itself"
        );
    }
    // Without the exclusion each query finds itself first.
    let plain = memory.search(&queries, DIM, &SearchParams::new(1)).unwrap();
    assert_eq!(plain.ids, [3, 20, 45]);
}

#[test]
fn the_cache_returns_what_the_engine_found_and_keys_on_every_input() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let cache_dir = dir.path().join("neighbours");
    let cached = NeighbourCache::new(exact(dir.path()), &cache_dir);
    let queries = rows(6, DIM, 12);
    let files = || {
        std::fs::read_dir(&cache_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let params = SearchParams::new(5);
    let first = cached.search(&queries, DIM, &params).unwrap();
    assert_eq!(
        first,
        cached.inner().search(&queries, DIM, &params).unwrap()
    );
    assert_eq!(files(), 2, "one ids and one scores file");
    // Read back, not searched again: scores written over in the file come back.
    let scores_file = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".scores.npy"))
        .unwrap();
    ramem_store::npy::write_f32_matrix(&scores_file, 6, 5, &[0.25; 30]).unwrap();
    let again = cached.search(&queries, DIM, &params).unwrap();
    assert_eq!(
        (again.ids, again.scores),
        (first.ids.clone(), vec![0.25; 30])
    );
    assert_eq!(files(), 2);
    // Another k, another exclusion or other queries are other files.
    cached.search(&queries, DIM, &SearchParams::new(4)).unwrap();
    let excluded = SearchParams::new(5).excluding(vec![0, 1, 2, 3, 4, 5]);
    let found = cached.search(&queries, DIM, &excluded).unwrap();
    assert!(!found.ids[..5].contains(&0));
    cached.search(&rows(6, DIM, 13), DIM, &params).unwrap();
    assert_eq!(files(), 8);
    // An ef does not change exact results, so it does not name a new file.
    cached
        .search(&queries, DIM, &params.clone().with_ef(3))
        .unwrap();
    assert_eq!(files(), 8);
    // Bad input is checked before the cache is consulted.
    let e = cached.search(&queries, 8, &params).unwrap_err();
    assert!(
        matches!(
            e,
            SearchError::DimMismatch {
                keys: 24,
                queries: 8
            }
        ),
        "{e}"
    );
}

#[test]
fn engines_open_by_name_and_hnsw_tags_its_cache_entries() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let memory = Arc::new(Memory::open(dir.path()).unwrap());
    assert_eq!("hnsw".parse::<Engine>(), Ok(Engine::Hnsw));
    let e = "flat".parse::<Engine>().unwrap_err();
    assert!(e.contains("exact") && e.contains("hnsw"), "{e}");
    let e = open_retriever(memory.clone(), Engine::Hnsw).err().unwrap();
    assert!(e.to_string().contains("ramem index build"), "{e}");
    build_memory_index(&memory, &HnswParams::default(), &|_| {}).unwrap();
    let hnsw = open_retriever(memory.clone(), Engine::Hnsw).unwrap();
    let flat = open_retriever(memory, Engine::Exact).unwrap();
    assert_eq!(
        (hnsw.engine(), flat.engine()),
        (Engine::Hnsw, Engine::Exact)
    );
    let queries = rows(10, DIM, 14);
    let params = SearchParams::new(5).with_ef(50);
    let approx = hnsw.search(&queries, DIM, &params).unwrap();
    let truth = flat.search(&queries, DIM, &params).unwrap();
    // 50 rows and a beam of 50: the graph search sees every row.
    assert_eq!(approx.recall_against(&truth), 1.0);
    assert!(flat.cache_tag(&params).is_none());
    let tag = hnsw.cache_tag(&params).unwrap();
    assert_ne!(Some(tag), hnsw.cache_tag(&SearchParams::new(5).with_ef(60)));
}

#[test]
fn recall_and_truncation_of_neighbour_lists() {
    let exact = Neighbours {
        k: 3,
        ids: vec![1, 2, 3, 4, 5, -1],
        scores: vec![0.9, 0.8, 0.7, 0.9, 0.8, f32::NEG_INFINITY],
    };
    let found = Neighbours {
        k: 3,
        ids: vec![2, 1, 9, 5, -1, -1],
        scores: vec![0.8, 0.9, 0.1, 0.8, f32::NEG_INFINITY, f32::NEG_INFINITY],
    };
    // 3 of the 5 true neighbours (padding is not a neighbour).
    assert!((found.recall_against(&exact) - 0.6).abs() < 1e-12);
    assert_eq!(exact.recall_against(&exact), 1.0);
    let first = exact.truncated(1);
    assert_eq!((first.k, first.ids), (1, vec![1, 4]));
    assert_eq!(found.padded_slots(), 2);
}

#[test]
fn errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let memory = exact(dir.path());
    let e = memory
        .search(&rows(2, 8, 1), 8, &SearchParams::new(3))
        .unwrap_err();
    assert!(
        e.to_string().contains("24") && e.to_string().contains('8'),
        "{e}"
    );
    let e = memory
        .search(&rows(2, DIM, 1), DIM, &SearchParams::new(0))
        .unwrap_err();
    assert!(e.to_string().contains("k must be at least 1"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    MemoryWriter::create(
        empty.path(),
        MemorySpec::new("e", DIM, FloatDtype::F16, true),
    )
    .unwrap();
    let e = exact(empty.path())
        .search(&rows(1, DIM, 1), DIM, &SearchParams::new(1))
        .unwrap_err();
    assert!(matches!(e, SearchError::EmptyMemory), "{e}");
    let remote = SearchError::Unavailable {
        engine: "milvus://10.0.0.1:19530/memory".into(),
        reason: "connection refused".into(),
    };
    assert!(remote.to_string().contains("10.0.0.1:19530"), "{remote}");
}
