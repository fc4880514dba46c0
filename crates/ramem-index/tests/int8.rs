//! int8 keys: recall against exact search, exact re-scoring, the edge cases
//! of k, exclusion and deleted entries, and the memory-directory round trip
//! (update after the memory grew, damaged and stale files).

mod common;

use std::sync::Arc;

use common::{append, clustered, memory_of, recall, DIM};
use half::f16;
use ramem_index::int8::int8_dir;
use ramem_index::{
    best_retriever, build_memory_int8, open_memory_int8, open_retriever, search_exact, search_int8,
    update_memory_int8, Engine, Int8Error, Int8Keys, Keys, SearchError, SearchParams,
};
use ramem_store::memory::{FloatDtype, Memory, MemoryWriter};

#[test]
fn recall_at_10_against_exact_search_with_exact_scores() {
    let (keys, queries) = clustered(5000, 150, DIM, 50, 11);
    let keys16: Vec<f16> = keys.iter().map(|&v| f16::from_f32(v)).collect();
    for f16_keys in [false, true] {
        let k = if f16_keys {
            Keys::f16(&keys16, DIM).unwrap()
        } else {
            Keys::f32(&keys, DIM).unwrap()
        };
        let codes = Int8Keys::quantise(&k);
        assert_eq!((codes.count(), codes.dim()), (5000, DIM));
        assert_eq!(codes.bytes_per_row(), DIM + 8);
        let exact = search_exact(&k, &queries, DIM, &SearchParams::new(10)).unwrap();
        let got = search_int8(&codes, &k, &queries, DIM, &SearchParams::new(10)).unwrap();
        let r = recall(&got.ids, &exact.ids, 10);
        eprintln!("f16 {f16_keys}: recall@10 {r:.4} with the default shortlist");
        assert!(r >= 0.99, "recall@10 {r}");
        // Scores are the exact inner products, best first.
        for (qi, (ids, scores)) in got.ids.chunks(10).zip(got.scores.chunks(10)).enumerate() {
            assert!(scores.windows(2).all(|w| w[0] >= w[1]));
            let q = &queries[qi * DIM..(qi + 1) * DIM];
            for (&id, &s) in ids.iter().zip(scores) {
                let row = &keys[id as usize * DIM..(id as usize + 1) * DIM];
                let want: f32 = if f16_keys {
                    row.iter()
                        .zip(q)
                        .map(|(a, b)| f16::from_f32(*a).to_f32() * b)
                        .sum()
                } else {
                    row.iter().zip(q).map(|(a, b)| a * b).sum()
                };
                assert!((s - want).abs() < 1e-5, "score {s} for {want}");
            }
        }
    }
}

/// Re-scoring every row is exact search, whatever the odd sizes: a
/// dimension that is not a multiple of 4, a last panel half full, k above
/// the rows a query can return.
#[test]
fn a_shortlist_of_every_row_is_exact_search() {
    for (n, dim) in [(1, 3), (15, 30), (47, 30), (100, 7)] {
        let (keys, queries) = clustered(n, 13, dim, 5.min(n), n as u64);
        let k = Keys::f32(&keys, dim).unwrap();
        let codes = Int8Keys::quantise(&k);
        let exclude: Vec<i64> = (0..13).map(|i| (i * 3) as i64 % n as i64).collect();
        for kk in [1, n.min(5), n + 2] {
            let params = SearchParams::new(kk).with_ef(n).excluding(exclude.clone());
            let want = search_exact(&k, &queries, dim, &params).unwrap();
            let got = search_int8(&codes, &k, &queries, dim, &params).unwrap();
            assert_eq!(got.ids, want.ids, "n {n} dim {dim} k {kk}");
            for (a, b) in got.scores.iter().zip(&want.scores) {
                assert!(a == b || (a - b).abs() < 1e-5, "{a} vs {b}");
            }
            assert!(got
                .ids
                .chunks(kk)
                .zip(&exclude)
                .all(|(ids, e)| !ids.contains(e)));
        }
    }
}

#[test]
fn bad_input_is_refused() {
    let (keys, queries) = clustered(100, 2, DIM, 5, 3);
    let k = Keys::f32(&keys, DIM).unwrap();
    let codes = Int8Keys::quantise(&k);
    let search = |q: &[f32], dim: usize, params: SearchParams| {
        search_int8(&codes, &k, q, dim, &params).unwrap_err()
    };
    assert!(matches!(
        search(&queries, DIM, SearchParams::new(0)),
        SearchError::ZeroK
    ));
    assert!(matches!(
        search(&queries[..DIM - 1], DIM - 1, SearchParams::new(3)),
        SearchError::DimMismatch { .. }
    ));
    let mut nan = queries.clone();
    nan[5] = f32::NAN;
    assert!(matches!(
        search(&nan, DIM, SearchParams::new(3)),
        SearchError::NonFiniteQuery { query: 0, pos: 5 }
    ));
    // Codes of other keys (fewer rows) are refused, not read past.
    let fewer = Int8Keys::quantise(&Keys::f32(&keys[..50 * DIM], DIM).unwrap());
    assert!(matches!(
        search_int8(&fewer, &k, &queries, DIM, &SearchParams::new(3)),
        Err(SearchError::GraphMismatch {
            graph: 50,
            keys: 100
        })
    ));
}

#[test]
fn saved_keys_round_trip_and_follow_the_memory() {
    let (keys, queries) = clustered(3000, 60, DIM, 30, 5);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    let (first, second) = keys.split_at(2001 * DIM);
    memory_of(&dir, first, FloatDtype::F16, 700);
    let memory = Arc::new(Memory::open(&dir).unwrap());
    assert!(matches!(
        open_memory_int8(&memory),
        Err(Int8Error::Missing { .. })
    ));
    assert_eq!(update_memory_int8(&memory).unwrap(), None);
    // Without int8 keys (or an index), the best engine is exact search.
    assert_eq!(best_retriever(memory.clone()).engine(), Engine::Exact);
    let (built, header) = build_memory_int8(&memory).unwrap();
    assert_eq!((header.count, header.key_dtype.as_str()), (2001, "f16"));
    assert_eq!(built.count(), 2001);
    assert_eq!(update_memory_int8(&memory).unwrap(), Some(0));
    let int8 = best_retriever(memory.clone());
    assert_eq!(int8.engine(), Engine::Int8);
    let exact = open_retriever(memory.clone(), Engine::Exact).unwrap();
    let params = SearchParams::new(8);
    let r = recall(
        &int8.search(&queries, DIM, &params).unwrap().ids,
        &exact.search(&queries, DIM, &params).unwrap().ids,
        8,
    );
    assert!(r >= 0.99, "recall@8 {r} through the saved keys");
    assert_eq!("int8".parse::<Engine>(), Ok(Engine::Int8));
    drop((int8, memory));

    // The memory grows: the keys are stale until brought up to date, and
    // then equal keys made from scratch.
    let mut writer = MemoryWriter::open_append(&dir).unwrap();
    append(&mut writer, second, 500);
    drop(writer);
    let memory = Arc::new(Memory::open(&dir).unwrap());
    let stale = open_memory_int8(&memory).err().unwrap();
    assert!(
        matches!(
            stale,
            Int8Error::Stale {
                built: 2001,
                now: 3000,
                ..
            }
        ),
        "{stale}"
    );
    assert!(stale.to_string().contains("ramem index build --kind int8"));
    assert!(open_retriever(memory.clone(), Engine::Int8).is_err());
    assert_eq!(update_memory_int8(&memory).unwrap(), Some(999));
    let files = |d: &std::path::Path| {
        ["codes.bin", "rows.bin"].map(|f| std::fs::read(int8_dir(d).join(f)).unwrap())
    };
    let updated = files(&dir);
    let fresh_dir = tmp.path().join("fresh");
    memory_of(&fresh_dir, &keys, FloatDtype::F16, 3000);
    build_memory_int8(&Memory::open(&fresh_dir).unwrap()).unwrap();
    assert!(
        updated == files(&fresh_dir),
        "the update differs from a fresh build"
    );

    // Deleted entries are never returned.
    let before = open_retriever(memory.clone(), Engine::Int8)
        .unwrap()
        .search(&queries, DIM, &SearchParams::new(5))
        .unwrap();
    drop(memory);
    let gone: Vec<i64> = before.ids.chunks(5).map(|ids| ids[0]).collect();
    MemoryWriter::open_append(&dir)
        .unwrap()
        .edit(&[], &gone)
        .unwrap();
    let memory = Arc::new(Memory::open(&dir).unwrap());
    let after = open_retriever(memory.clone(), Engine::Int8)
        .unwrap()
        .search(&queries, DIM, &SearchParams::new(5))
        .unwrap();
    assert!(after.ids.iter().all(|id| !gone.contains(id)));
    let exact = search_exact(
        &Keys::of_memory(&memory).unwrap(),
        &queries,
        DIM,
        &SearchParams::new(5),
    )
    .unwrap();
    assert!(recall(&after.ids, &exact.ids, 5) >= 0.99);
}

#[test]
fn damaged_files_are_clear_errors() {
    let (keys, _) = clustered(700, 1, DIM, 10, 8);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mem");
    memory_of(&dir, &keys, FloatDtype::F32, 700);
    let memory = Memory::open(&dir).unwrap();
    build_memory_int8(&memory).unwrap();
    let codes = int8_dir(&dir).join("codes.bin");
    let rows = int8_dir(&dir).join("rows.bin");
    let header = int8_dir(&dir).join("header.json");
    let damage = |path: &std::path::Path, change: &dyn Fn(&mut Vec<u8>), words: &str| {
        let good = std::fs::read(path).unwrap();
        let mut bad = good.clone();
        change(&mut bad);
        std::fs::write(path, &bad).unwrap();
        let err = open_memory_int8(&memory).err().unwrap().to_string();
        assert!(err.contains(words), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(path, good).unwrap();
        open_memory_int8(&memory).unwrap();
    };
    damage(&codes, &|b| b[100] ^= 1, "checksum");
    damage(
        &codes,
        &|b| b.truncate(b.len() - 16),
        "bytes, but the header",
    );
    damage(&rows, &|b| b[3] ^= 0x40, "checksum");
    damage(
        &header,
        &|b| *b = b"{\"format\": 1}".to_vec(),
        "not a valid",
    );
    let text = String::from_utf8(std::fs::read(&header).unwrap()).unwrap();
    damage(
        &header,
        &|b| *b = text.replace("\"f32\"", "\"f16\"").into_bytes(),
        "made over f16 keys, the memory stores f32",
    );
}
