//! search_exact against a plain brute-force reference, plus edge and error cases.

use half::f16;
use ramem_index::{search_exact, Keys, Neighbours, SearchError, SearchParams};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `rows` random L2-normalised vectors.
    fn unit(&mut self, rows: usize, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..rows * dim).map(|_| self.next()).collect();
        for r in v.chunks_mut(dim) {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

/// All scores in f64, full sort by (score desc, id asc).
fn reference(keys: &[f32], queries: &[f32], dim: usize, q: usize) -> Vec<(f64, i64)> {
    let n = keys.len() / dim;
    let qv = &queries[q * dim..(q + 1) * dim];
    let mut all: Vec<(f64, i64)> = (0..n)
        .map(|r| {
            let s = keys[r * dim..(r + 1) * dim]
                .iter()
                .zip(qv)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            (s, r as i64)
        })
        .collect();
    all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    all
}

const TOL: f64 = 1e-4;

/// Checks `got` against the reference: scores agree within TOL rank by rank,
/// every id's own score agrees, ids are unique, results are sorted, and where
/// the reference has a clear gap after rank k the id sets are identical.
fn check(got: &Neighbours, keys: &[f32], queries: &[f32], dim: usize, exclude: Option<&[i64]>) {
    let k = got.k;
    let nq = queries.len() / dim;
    assert_eq!(got.ids.len(), nq * k);
    for q in 0..nq {
        let mut refq = reference(keys, queries, dim, q);
        if let Some(e) = exclude {
            refq.retain(|&(_, id)| id != e[q]);
        }
        let ids = &got.ids[q * k..(q + 1) * k];
        let scores = &got.scores[q * k..(q + 1) * k];
        let real = refq.len().min(k);
        for j in 0..k {
            if j >= real {
                assert_eq!(ids[j], -1, "query {q} rank {j}: expected padding");
                assert_eq!(scores[j], f32::NEG_INFINITY);
                continue;
            }
            assert!(
                (scores[j] as f64 - refq[j].0).abs() < TOL,
                "query {q} rank {j}: score {} vs reference {}",
                scores[j],
                refq[j].0
            );
            let own = refq
                .iter()
                .find(|r| r.1 == ids[j])
                .expect("id is a real, non-excluded key");
            assert!(
                (own.0 - scores[j] as f64).abs() < TOL,
                "query {q}: id {} score",
                ids[j]
            );
            if j > 0 {
                assert!(
                    scores[j - 1] > scores[j]
                        || (scores[j - 1] == scores[j] && ids[j - 1] < ids[j]),
                    "query {q}: not sorted at rank {j}"
                );
            }
        }
        let mut uniq = ids[..real].to_vec();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), real, "query {q}: duplicate ids");
        if real < refq.len() && refq[real - 1].0 - refq[real].0 > 2.0 * TOL {
            let mut want: Vec<i64> = refq[..real].iter().map(|r| r.1).collect();
            want.sort();
            assert_eq!(uniq, want, "query {q}: id set differs from reference");
        }
    }
}

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

fn run_both(n: usize, dim: usize, nq: usize, k: usize, seed: u64) {
    let mut rng = Rng(seed);
    let keys = rng.unit(n, dim);
    let queries = rng.unit(nq, dim);
    let params = SearchParams::new(k);
    let got = search_exact(&Keys::f32(&keys, dim).unwrap(), &queries, dim, &params).unwrap();
    check(&got, &keys, &queries, dim, None);
    // f16 keys: the reference uses the same rounded keys.
    let k16 = to_f16(&keys);
    let rounded: Vec<f32> = k16.iter().map(|x| x.to_f32()).collect();
    let got = search_exact(&Keys::f16(&k16, dim).unwrap(), &queries, dim, &params).unwrap();
    check(&got, &rounded, &queries, dim, None);
}

#[test]
fn matches_reference_batch() {
    // N around and not a multiple of the 2048-row block; Q over and not a
    // multiple of the 256-query block.
    for (i, &(n, dim, nq, k)) in [
        (1000, 16, 20, 5),
        (4096, 32, 65, 10),
        (9000, 48, 300, 10),
        (5000, 384, 17, 1),
        (300, 7, 33, 50),
    ]
    .iter()
    .enumerate()
    {
        run_both(n, dim, nq, k, 100 + i as u64);
    }
}

#[test]
fn matches_reference_few_queries() {
    // Streaming path: N not a multiple of its 16384/256-row blocks, odd dims.
    for (i, &(n, dim, nq, k)) in [
        (1, 384, 1, 1),
        (20000, 33, 1, 10),
        (17000, 384, 3, 7),
        (999, 15, 8, 20),
    ]
    .iter()
    .enumerate()
    {
        run_both(n, dim, nq, k, 200 + i as u64);
    }
}

#[test]
fn k_larger_than_n_pads() {
    for nq in [1, 20] {
        let mut rng = Rng(7);
        let (n, dim) = (5, 8);
        let keys = rng.unit(n, dim);
        let queries = rng.unit(nq, dim);
        let got = search_exact(
            &Keys::f32(&keys, dim).unwrap(),
            &queries,
            dim,
            &SearchParams::new(8),
        )
        .unwrap();
        check(&got, &keys, &queries, dim, None);
        for q in 0..nq {
            assert!(got.ids[q * 8..q * 8 + 5].iter().all(|&i| i >= 0));
            assert_eq!(&got.ids[q * 8 + 5..q * 8 + 8], &[-1, -1, -1]);
        }
    }
}

#[test]
fn exclude_self() {
    for nq in [3, 40] {
        let mut rng = Rng(11);
        let (n, dim) = (500, 24);
        let keys = rng.unit(n, dim);
        // Queries are copies of key rows 0, 10, 20, ...: each one's best
        // match is itself unless excluded.
        let rows: Vec<i64> = (0..nq as i64).map(|i| i * 10).collect();
        let queries: Vec<f32> = rows
            .iter()
            .flat_map(|&r| keys[r as usize * dim..(r as usize + 1) * dim].to_vec())
            .collect();
        let keyset = Keys::f32(&keys, dim).unwrap();
        let plain = search_exact(&keyset, &queries, dim, &SearchParams::new(4)).unwrap();
        for (q, &r) in rows.iter().enumerate() {
            assert_eq!(plain.ids[q * 4], r);
        }
        let mut ex = rows.clone();
        ex[0] = -1; // -1 means no exclusion
        let got = search_exact(
            &keyset,
            &queries,
            dim,
            &SearchParams::new(4).excluding(ex.clone()),
        )
        .unwrap();
        assert_eq!(got.ids[0], 0);
        for (q, &r) in rows.iter().enumerate().skip(1) {
            assert!(
                !got.ids[q * 4..q * 4 + 4].contains(&r),
                "query {q} returned itself"
            );
        }
        check(&got, &keys, &queries, dim, Some(&ex));
    }
}

#[test]
fn exclude_with_k_covering_all_keys() {
    let mut rng = Rng(3);
    let (n, dim) = (4, 8);
    let keys = rng.unit(n, dim);
    let queries = keys[..dim].to_vec();
    let got = search_exact(
        &Keys::f32(&keys, dim).unwrap(),
        &queries,
        dim,
        &SearchParams::new(4).excluding(vec![0]),
    )
    .unwrap();
    assert!(!got.ids.contains(&0));
    assert_eq!(got.ids[3], -1);
    check(&got, &keys, &queries, dim, Some(&[0]));
}

#[test]
fn ties_break_by_smaller_id() {
    // Identical keys: all scores equal, so ids must come out 0, 1, 2...
    let dim = 16;
    for n in [10, 5000] {
        let keys = vec![0.25f32; n * dim];
        for nq in [1, 12] {
            let queries = vec![0.5f32; nq * dim];
            for keyset in [Keys::f32(&keys, dim).unwrap()] {
                let got = search_exact(&keyset, &queries, dim, &SearchParams::new(6)).unwrap();
                for q in 0..nq {
                    assert_eq!(&got.ids[q * 6..q * 6 + 6], &[0, 1, 2, 3, 4, 5]);
                }
            }
            let k16 = to_f16(&keys);
            let got = search_exact(
                &Keys::f16(&k16, dim).unwrap(),
                &queries,
                dim,
                &SearchParams::new(3),
            )
            .unwrap();
            assert_eq!(&got.ids[..3], &[0, 1, 2]);
        }
    }
}

#[test]
fn deterministic_across_thread_counts() {
    let mut rng = Rng(99);
    let (n, dim) = (30000, 64);
    let keys = to_f16(&rng.unit(n, dim));
    for nq in [2, 100] {
        let queries = rng.unit(nq, dim);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    search_exact(
                        &Keys::f16(&keys, dim).unwrap(),
                        &queries,
                        dim,
                        &SearchParams::new(10),
                    )
                    .unwrap()
                })
        };
        assert_eq!(run(1), run(3));
    }
}

#[test]
fn no_queries_is_empty() {
    let keys = vec![1.0f32; 8];
    let got = search_exact(&Keys::f32(&keys, 4).unwrap(), &[], 4, &SearchParams::new(3)).unwrap();
    assert!(got.ids.is_empty() && got.scores.is_empty());
}

#[test]
fn errors() {
    let keys = vec![0.5f32; 12];
    let ks = Keys::f32(&keys, 4).unwrap();
    let q = vec![0.5f32; 8];
    let p = SearchParams::new;
    let err = |r: Result<Neighbours, SearchError>| r.unwrap_err();

    assert!(matches!(
        err(search_exact(&ks, &q, 4, &p(0))),
        SearchError::ZeroK
    ));
    let e = err(search_exact(&ks, &q, 4, &p(1).with_ef(0)));
    assert!(matches!(e, SearchError::ZeroEf), "{e}");
    assert!(matches!(
        err(search_exact(&ks, &q, 2, &p(1))),
        SearchError::DimMismatch {
            keys: 4,
            queries: 2
        }
    ));
    let e = err(search_exact(&ks, &q[..6], 4, &p(1)));
    assert!(
        matches!(e, SearchError::RaggedQueries { len: 6, dim: 4 }),
        "{e}"
    );
    let empty: Vec<f16> = Vec::new();
    assert!(matches!(
        err(search_exact(&Keys::f16(&empty, 4).unwrap(), &q, 4, &p(1))),
        SearchError::EmptyMemory
    ));
    assert!(matches!(
        Keys::f32(&keys[..10], 4).err(),
        Some(SearchError::RaggedKeys { len: 10, dim: 4 })
    ));
    assert!(matches!(
        Keys::f32(&keys, 0).err(),
        Some(SearchError::ZeroDim)
    ));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut qb = q.clone();
        qb[6] = bad;
        let e = err(search_exact(&ks, &qb, 4, &p(1)));
        assert!(
            matches!(e, SearchError::NonFiniteQuery { query: 1, pos: 2 }),
            "{e}"
        );
        assert!(e.to_string().contains("query 1"), "{e}");
    }
    assert!(matches!(
        err(search_exact(&ks, &q, 4, &p(usize::MAX / 2))),
        SearchError::TooManyResults { queries: 2, k } if k == usize::MAX / 2
    ));
    let e = err(search_exact(
        &ks,
        &q,
        4,
        &SearchParams::new(1).excluding(vec![-1; 3]),
    ));
    assert!(
        matches!(e, SearchError::ExcludeLength { got: 3, want: 2 }),
        "{e}"
    );
    assert!(e.to_string().contains("exclude list has 3 entries"), "{e}");
    assert!(SearchError::DimMismatch {
        keys: 4,
        queries: 2
    }
    .to_string()
    .contains("dimension mismatch"));
}

#[test]
fn nan_keys_are_skipped() {
    let dim = 4;
    let mut keys = vec![0.5f32; 3 * dim];
    keys[dim + 2] = f32::NAN; // row 1 scores NaN
    for nq in [1, 20] {
        let queries = vec![0.5f32; nq * dim];
        let got = search_exact(
            &Keys::f32(&keys, dim).unwrap(),
            &queries,
            dim,
            &SearchParams::new(3),
        )
        .unwrap();
        for q in 0..nq {
            assert_eq!(&got.ids[q * 3..q * 3 + 3], &[0, 2, -1], "nq={nq}");
        }
    }
}
