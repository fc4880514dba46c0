//! HNSW: recall against exact search on clustered data, the memory-directory
//! round trip, damaged and stale index files, and the edge cases of k and
//! exclusion.

mod common;

use std::path::Path;

use common::{append, clustered, memory_of, recall, DIM};
use ramem_index::hnsw::{index_dir, HEADER_FILE, LINKS_FILE};
use ramem_index::{
    build_memory_index, open_memory_index, search_exact, HnswError, HnswIndex, HnswParams, Keys,
    SearchError, SearchParams,
};
use ramem_store::memory::{FloatDtype, Memory, MemoryWriter};

fn params(k: usize, ef: usize) -> SearchParams {
    SearchParams::new(k).with_ef(ef)
}

#[test]
fn recall_at_10_on_clustered_keys() {
    let (keys, queries) = clustered(8000, 200, DIM, 80, 1);
    for f16 in [false, true] {
        let keys16: Vec<half::f16> = keys.iter().map(|&v| half::f16::from_f32(v)).collect();
        let k = if f16 {
            Keys::f16(&keys16, DIM).unwrap()
        } else {
            Keys::f32(&keys, DIM).unwrap()
        };
        let vectors = &k;
        let index = HnswIndex::build(vectors, &HnswParams::default(), &|_| {}).unwrap();
        let exact = search_exact(&k, &queries, DIM, &SearchParams::new(10)).unwrap();
        let mut last = 0.0;
        for ef in [10, 32, 64, 128] {
            let got = index
                .search(vectors, &queries, DIM, &params(10, ef))
                .unwrap();
            let r = recall(&got.ids, &exact.ids, 10);
            eprintln!("f16 {f16} ef {ef}: recall@10 {r:.4}");
            assert!(
                r >= last - 0.02,
                "recall fell from {last} to {r} as ef grew"
            );
            last = r;
            if ef >= 64 {
                assert!(r >= 0.95, "recall@10 {r} at ef {ef}");
            }
            // Scores are the inner products of the ids returned, best first.
            for (qi, (ids, scores)) in got.ids.chunks(10).zip(got.scores.chunks(10)).enumerate() {
                assert!(scores.windows(2).all(|w| w[0] >= w[1]));
                let exact_best = exact.scores[qi * 10];
                assert!(scores[0] <= exact_best + 1e-4);
                assert!(ids.iter().all(|&id| (0..8000).contains(&id)));
            }
        }
    }
}

#[test]
fn build_is_the_same_for_any_thread_count() {
    let (keys, queries) = clustered(3000, 50, DIM, 30, 2);
    let tmp = tempfile::tempdir().unwrap();
    let mut links = Vec::new();
    for threads in [1, 2] {
        let dir = tmp.path().join(format!("mem{threads}"));
        memory_of(&dir, &keys, FloatDtype::F16, 1000);
        let memory = Memory::open(&dir).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let index = pool
            .install(|| build_memory_index(&memory, &HnswParams::default(), &|_| {}))
            .unwrap();
        let found = index
            .search(
                &Keys::of_memory(&memory).unwrap(),
                &queries,
                DIM,
                &params(5, 20),
            )
            .unwrap();
        links.push((
            std::fs::read(index_dir(&dir).join(LINKS_FILE)).unwrap(),
            found,
        ));
    }
    assert!(
        links[0] == links[1],
        "1 and 2 threads built different graphs"
    );
}

#[test]
fn saved_index_gives_the_same_results_and_checks_the_memory() {
    let (keys, queries) = clustered(2500, 40, DIM, 25, 3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    // Uneven shards: 700, 700, 700, 400.
    memory_of(&dir, &keys[..2100 * DIM], FloatDtype::F16, 700);
    {
        let mut w = MemoryWriter::open_append(&dir).unwrap();
        append(&mut w, &keys[2100 * DIM..], 400);
    }
    let memory = Memory::open(&dir).unwrap();
    let err = open_memory_index(&memory).unwrap_err();
    assert!(matches!(err, HnswError::Missing { .. }), "{err}");
    let progress = std::sync::Mutex::new(Vec::new());
    let built = build_memory_index(
        &memory,
        &HnswParams {
            m: 8,
            ef_construction: 64,
            seed: 5,
        },
        &|d| progress.lock().unwrap().push(d),
    )
    .unwrap();
    let progress = progress.into_inner().unwrap();
    assert_eq!(progress.last(), Some(&2500));
    assert!(progress.windows(2).all(|w| w[0] < w[1]));
    let opened = open_memory_index(&memory).unwrap();
    assert_eq!(opened, built);
    assert_eq!(opened.header().m, 8);
    assert_eq!(opened.header().count, 2500);
    let a = built
        .search(
            &Keys::of_memory(&memory).unwrap(),
            &queries,
            DIM,
            &params(10, 40),
        )
        .unwrap();
    let b = opened
        .search(
            &Keys::of_memory(&memory).unwrap(),
            &queries,
            DIM,
            &params(10, 40),
        )
        .unwrap();
    assert_eq!(a, b);
    let exact = search_exact(
        &Keys::of_memory(&memory).unwrap(),
        &queries,
        DIM,
        &SearchParams::new(10),
    )
    .unwrap();
    assert!(recall(&a.ids, &exact.ids, 10) >= 0.95);

    // The memory grows: the index is stale until rebuilt.
    drop(memory);
    let (more, _) = clustered(100, 0, DIM, 25, 4);
    append(&mut MemoryWriter::open_append(&dir).unwrap(), &more, 100);
    let memory = Memory::open(&dir).unwrap();
    let err = open_memory_index(&memory).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            HnswError::Stale {
                built: 2500,
                now: 2600,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains(HEADER_FILE) && msg.contains("ramem index build"),
        "{msg}"
    );
    build_memory_index(&memory, &HnswParams::default(), &|_| {}).unwrap();
    assert_eq!(open_memory_index(&memory).unwrap().len(), 2600);
}

#[test]
fn damaged_index_files_are_errors_naming_the_file() {
    let (keys, _) = clustered(600, 0, DIM, 10, 6);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    memory_of(&dir, &keys, FloatDtype::F32, 600);
    let memory = Memory::open(&dir).unwrap();
    build_memory_index(&memory, &HnswParams::default(), &|_| {}).unwrap();
    let links = index_dir(&dir).join(LINKS_FILE);
    let header = index_dir(&dir).join(HEADER_FILE);
    let good_links = std::fs::read(&links).unwrap();
    let good_header = std::fs::read(&header).unwrap();
    let expect_err = |what: &str, file: &Path, words: &str| {
        let err = open_memory_index(&memory).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{what}: {err}");
        assert!(err.contains(words), "{what}: {err}");
    };

    std::fs::write(&links, &good_links[..good_links.len() / 2]).unwrap();
    expect_err("truncated links", &links, "truncated");
    std::fs::write(&links, &good_links[..0]).unwrap();
    expect_err("empty links", &links, "truncated");
    let mut longer = good_links.clone();
    longer.extend_from_slice(b"more");
    std::fs::write(&links, &longer).unwrap();
    expect_err("trailing data", &links, "bytes");
    let mut flipped = good_links.clone();
    let at = flipped.len() - 7;
    flipped[at] ^= 0x40;
    std::fs::write(&links, &flipped).unwrap();
    expect_err("flipped byte", &links, "checksum");
    std::fs::remove_file(&links).unwrap();
    expect_err("missing links", &links, "cannot");
    std::fs::write(&links, &good_links).unwrap();

    std::fs::write(&header, &good_header[..good_header.len() / 2]).unwrap();
    expect_err("truncated header", &header, "not a valid index header");
    std::fs::write(&header, b"").unwrap();
    expect_err("empty header", &header, "not a valid index header");
    let text = String::from_utf8(good_header.clone()).unwrap();
    std::fs::write(&header, text.replace("\"version\": 1", "\"version\": 99")).unwrap();
    expect_err("newer version", &header, "newer");
    std::fs::write(&header, text.replace("\"dim\": 48", "\"dim\": 47")).unwrap();
    expect_err("other dim", &header, "does not match");
    std::fs::write(&header, text.replace("\"count\": 600", "\"count\": 601")).unwrap();
    expect_err("more rows than the memory", &header, "does not match");
    std::fs::write(&header, &good_header).unwrap();
    assert_eq!(open_memory_index(&memory).unwrap().len(), 600);
}

#[test]
fn k_edge_cases_and_exclusion() {
    let (keys, _) = clustered(300, 0, DIM, 6, 7);
    let k32 = Keys::f32(&keys, DIM).unwrap();
    let vectors = &k32;
    let index = HnswIndex::build(vectors, &HnswParams::default(), &|_| {}).unwrap();
    let queries = keys[..5 * DIM].to_vec();

    let err = index
        .search(vectors, &queries, DIM, &params(0, 10))
        .unwrap_err();
    assert!(matches!(err, SearchError::ZeroK), "{err}");
    let err = index
        .search(vectors, &queries[..DIM - 1], DIM, &params(1, 10))
        .unwrap_err();
    assert!(matches!(err, SearchError::RaggedQueries { .. }));
    let mut nan = queries.clone();
    nan[3] = f32::NAN;
    let err = index
        .search(vectors, &nan, DIM, &params(1, 10))
        .unwrap_err();
    assert!(matches!(
        err,
        SearchError::NonFiniteQuery { query: 0, pos: 3 }
    ));
    let other = Keys::f32(&keys[..299 * DIM], DIM).unwrap();
    let err = index
        .search(&other, &queries, DIM, &params(1, 10))
        .unwrap_err();
    assert!(matches!(
        err,
        SearchError::GraphMismatch {
            graph: 300,
            keys: 299
        }
    ));

    // Each query is a key: it finds itself first, unless excluded.
    let found = index
        .search(vectors, &queries, DIM, &params(3, 16))
        .unwrap();
    for qi in 0..5 {
        assert_eq!(found.ids[qi * 3], qi as i64);
    }
    let excl = SearchParams::new(3)
        .excluding(vec![0, 1, -1, 999, 4])
        .with_ef(16);
    let found = index.search(vectors, &queries, DIM, &excl).unwrap();
    let exact = search_exact(&k32, &queries, DIM, &{
        let mut p = SearchParams::new(3);
        p.exclude = excl.exclude.clone();
        p
    })
    .unwrap();
    for qi in 0..5 {
        let row = &found.ids[qi * 3..qi * 3 + 3];
        assert_eq!(
            row.contains(&(qi as i64)),
            qi == 2 || qi == 3,
            "query {qi}: {row:?}"
        );
    }
    assert!(recall(&found.ids, &exact.ids, 3) >= 0.9);
    let wrong = params(3, 16).excluding(vec![0]);
    assert!(matches!(
        index.search(vectors, &queries, DIM, &wrong).unwrap_err(),
        SearchError::ExcludeLength { got: 1, want: 5 }
    ));

    // k above the row count: every row, then -1 / -inf padding.
    let found = index
        .search(vectors, &queries[..DIM], DIM, &params(310, 16))
        .unwrap();
    let mut ids: Vec<i64> = found.ids[..300].to_vec();
    ids.sort_unstable();
    assert_eq!(ids, (0..300).collect::<Vec<_>>());
    assert!(found.ids[300..].iter().all(|&id| id == -1));
    assert!(found.scores[300..].iter().all(|&s| s == f32::NEG_INFINITY));
    // The same with the query's own row excluded: 299 rows.
    let found = index
        .search(
            vectors,
            &queries[..DIM],
            DIM,
            &SearchParams::new(300).excluding(vec![0]).with_ef(16),
        )
        .unwrap();
    assert!(!found.ids.contains(&0));
    assert_eq!(found.ids.iter().filter(|&&id| id >= 0).count(), 299);

    // No queries: no results.
    let none = index.search(vectors, &[], DIM, &params(4, 16)).unwrap();
    assert_eq!(none.queries(), 0);

    // One row.
    let one = Keys::f32(&keys[..DIM], DIM).unwrap();
    let v1 = &one;
    let i1 = HnswIndex::build(v1, &HnswParams::default(), &|_| {}).unwrap();
    let found = i1
        .search(v1, &queries[..2 * DIM], DIM, &params(2, 8))
        .unwrap();
    assert_eq!(found.ids, vec![0, -1, 0, -1]);
    // Nothing to index.
    let empty = Keys::f32(&[], DIM).unwrap();
    assert!(matches!(
        HnswIndex::build(&empty, &HnswParams::default(), &|_| {}).unwrap_err(),
        SearchError::EmptyMemory
    ));
}

#[test]
fn an_index_brought_up_to_date_after_the_memory_grew_finds_the_new_rows() {
    let (keys, queries) = clustered(6000, 200, DIM, 60, 5);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    let (first, second) = keys.split_at(4000 * DIM);
    memory_of(&dir, first, FloatDtype::F16, 1000);
    let memory = Memory::open(&dir).unwrap();
    build_memory_index(&memory, &HnswParams::default(), &|_| {}).unwrap();
    drop(memory);
    let mut writer = MemoryWriter::open_append(&dir).unwrap();
    append(&mut writer, second, 1000);
    drop(writer);
    let memory = Memory::open(&dir).unwrap();
    assert!(matches!(
        open_memory_index(&memory),
        Err(HnswError::Stale { .. })
    ));
    let added = ramem_index::update_memory_index(&memory, &|_| {}).unwrap();
    assert_eq!(added, Some(2000));
    let index = open_memory_index(&memory).unwrap();
    assert_eq!(index.len(), 6000);
    let mem_keys = Keys::of_memory(&memory).unwrap();
    let exact = search_exact(&mem_keys, &queries, DIM, &SearchParams::new(10)).unwrap();
    let got = index
        .search(&mem_keys, &queries, DIM, &params(10, 64))
        .unwrap();
    let r = recall(&got.ids, &exact.ids, 10);
    assert!(r >= 0.95, "recall@10 {r} after the update");
    // A third of the true neighbours are new rows: the update reaches them.
    let new_found = got.ids.iter().filter(|&&id| id >= 4000).count();
    let new_true = exact.ids.iter().filter(|&&id| id >= 4000).count();
    assert!(new_true > 0 && new_found as f64 >= 0.9 * new_true as f64);
    // Up to date: nothing to do; no index: nothing to update.
    assert_eq!(
        ramem_index::update_memory_index(&memory, &|_| {}).unwrap(),
        Some(0)
    );
    let other = tmp.path().join("other");
    memory_of(&other, first, FloatDtype::F16, 1000);
    let other = Memory::open(&other).unwrap();
    assert_eq!(
        ramem_index::update_memory_index(&other, &|_| {}).unwrap(),
        None
    );
}

#[test]
fn deleted_entries_are_never_returned() {
    let (keys, queries) = clustered(3000, 50, DIM, 30, 9);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    memory_of(&dir, &keys, FloatDtype::F16, 700);
    let memory = Memory::open(&dir).unwrap();
    build_memory_index(&memory, &HnswParams::default(), &|_| {}).unwrap();
    let before = search_exact(
        &Keys::of_memory(&memory).unwrap(),
        &queries,
        DIM,
        &SearchParams::new(5),
    )
    .unwrap();
    drop(memory);
    // Delete every query's best match, and every third row besides.
    let mut gone: Vec<i64> = before.ids.chunks(5).map(|ids| ids[0]).collect();
    gone.extend((0..3000).step_by(3));
    let mut writer = MemoryWriter::open_append(&dir).unwrap();
    writer.edit(&[], &gone).unwrap();
    drop(writer);
    let memory = Memory::open(&dir).unwrap();
    let mem_keys = Keys::of_memory(&memory).unwrap();
    let exact = search_exact(&mem_keys, &queries, DIM, &SearchParams::new(5)).unwrap();
    let index = open_memory_index(&memory).unwrap();
    let approx = index
        .search(&mem_keys, &queries, DIM, &params(5, 64))
        .unwrap();
    for ids in [&exact.ids, &approx.ids] {
        assert!(ids.iter().all(|&id| id >= 0 && !gone.contains(&id)));
    }
    // Exact search over the survivors is what it was, less the deleted rows.
    for (q, ids) in exact.ids.chunks(5).enumerate() {
        let kept: Vec<i64> = before.ids[q * 5..q * 5 + 5]
            .iter()
            .copied()
            .filter(|id| !gone.contains(id))
            .collect();
        assert_eq!(&ids[..kept.len()], &kept[..], "query {q}");
    }
    assert!(recall(&approx.ids, &exact.ids, 5) >= 0.9);
}
