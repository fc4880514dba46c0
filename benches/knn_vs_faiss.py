#!/usr/bin/env python3
"""Exact k-NN by inner product: ramem-index vs faiss IndexFlatIP, side by side.

Same seeded random unit vectors for both, same thread count, rounds
interleaved, medians reported. ramem runs as the example binary
`knn_bench` (crates/ramem-index/examples/knn_bench.rs) on f16 and f32 keys,
and on int8 keys (each query's best `--int8-shortlist` rows re-scored on the
f16 keys); faiss runs IndexFlatIP on f32 keys.

    cargo build --release -p ramem-index --example knn_bench
    python3 benches/knn_vs_faiss.py --n 1000000 --dim 384

numpy and faiss-cpu live in a throw-away venv (default
~/.cache/ramem/bench-venv-faiss) that this script creates and re-executes
itself in; ramem never depends on them. See benches/README.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import benchkit
from benchkit import cpu_model, log, median

CACHE = os.path.join(os.environ.get("RAMEM_HOME", os.path.expanduser("~/.cache/ramem")))
VENV_PACKAGES = ["numpy", "faiss-cpu"]
IN_VENV_MARK = "RAMEM_KNN_BENCH_IN_VENV"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_venv_and_reexec(args) -> None:
    """Create the venv if needed, then re-execute this script inside it."""
    benchkit.ensure_venv_and_reexec(__file__, args.venv, VENV_PACKAGES, IN_VENV_MARK, args.threads)




def unit_vectors(rng, rows, dim, chunk=100_000):
    import numpy as np

    out = np.empty((rows, dim), dtype=np.float32)
    for s in range(0, rows, chunk):
        v = rng.standard_normal((min(chunk, rows - s), dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[s:s + len(v)] = v
    return out


def numpy_copy_bandwidth(mb=1024, repeats=5):
    """GB/s moved (read + write) by a single-threaded numpy copy."""
    import numpy as np

    a = np.ones(mb << 18, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9


def run_ramem(args, keys, queries, mode, out, int8=False):
    cmd = [args.bin, "--keys", keys, "--queries", queries, "--k", str(args.k),
           "--mode", mode, "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--out", out]
    if int8:
        cmd += ["--int8", "--shortlist", str(args.int8_shortlist)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def faiss_round(index, queries, k, mode, repeats):
    qps, ids = [], None
    # Warm-up, as ramem does.
    index.search(queries[:1] if mode == "single" else queries[:64], k)
    for _ in range(repeats):
        t = time.perf_counter()
        if mode == "single":
            ids = [index.search(queries[i:i + 1], k)[1] for i in range(len(queries))]
            ids = __import__("numpy").concatenate(ids)
        else:
            ids = index.search(queries, k)[1]
        qps.append(len(queries) / (time.perf_counter() - t))
    return qps, ids


def recall(ids, ref, k):
    hits = sum(len(set(a[:k]) & set(b[:k])) for a, b in zip(ids.tolist(), ref.tolist()))
    return hits / (len(ref) * k)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="key rows")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000, help="queries in the batch test")
    ap.add_argument("--single-queries", type=int, default=200, help="queries run one at a time")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--int8-shortlist", type=int, default=None,
                    help="rows re-scored per query with int8 keys (default 4 x k)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "examples", "knn_bench"))
    ap.add_argument("--workdir", default=None, help="keep the .npy files here")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--venv", default=os.path.join(CACHE, "bench-venv-faiss"))
    ap.add_argument("--no-venv", action="store_true", help="use the current interpreter")
    return ap.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.int8_shortlist is None:
        args.int8_shortlist = 4 * args.k
    if not args.no_venv:
        ensure_venv_and_reexec(args)
    import numpy as np
    import faiss

    if not os.path.exists(args.bin):
        log(f"no ramem binary at {args.bin}: cargo build --release -p ramem-index --example knn_bench")
        return 2
    faiss.omp_set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="knn-bench-")
    os.makedirs(work, exist_ok=True)

    log(f"generating {args.n} x {args.dim} keys, seed {args.seed}")
    rng = np.random.default_rng(args.seed)
    keys = unit_vectors(rng, args.n, args.dim)
    queries = unit_vectors(rng, args.queries, args.dim)
    singles = queries[:args.single_queries]
    paths = {name: os.path.join(work, f"{name}.npy") for name in ("keys_f32", "keys_f16", "queries", "singles")}
    np.save(paths["keys_f32"], keys)
    np.save(paths["keys_f16"], keys.astype(np.float16))
    np.save(paths["queries"], queries)
    np.save(paths["singles"], singles)

    index = faiss.IndexFlatIP(args.dim)
    index.add(keys)

    bw_numpy = numpy_copy_bandwidth()
    bw = subprocess.run([args.bin, "--mode", "bandwidth", "--repeats", "5", "--threads", str(args.threads)],
                        check=True, capture_output=True, text=True)
    bw_rust = max(json.loads(bw.stdout)["gb_per_s"])

    engines = [("faiss f32", None), ("ramem f16", "keys_f16"), ("ramem f32", "keys_f32"),
               ("ramem int8", "keys_f16")]
    qps = {(e, m): [] for e, _ in engines for m in ("batch", "single")}
    ids = {}
    for r in range(args.rounds):
        for mode, qpath, qs in (("batch", paths["queries"], queries), ("single", paths["singles"], singles)):
            for name, kp in engines:
                if kp is None:
                    got, i = faiss_round(index, qs, args.k, mode, args.repeats)
                else:
                    int8 = name.endswith("int8")
                    out = os.path.join(work, f"ids_{name.replace(' ', '_')}_{mode}.npy")
                    res = run_ramem(args, paths[kp], qpath, mode, out, int8)
                    got, i = res["queries_per_s"], np.load(out)
                qps[(name, mode)].extend(got)
                ids[(name, mode)] = i
                log(f"round {r + 1}/{args.rounds} {mode:6} {name}: {median(got):.1f} q/s")

    rows = []
    for mode in ("batch", "single"):
        ref = ids[("faiss f32", mode)]
        base = median(qps[("faiss f32", mode)])
        for name, kp in engines:
            q = median(qps[(name, mode)])
            if name.endswith("int8"):
                # codes + scale + code sum per row, then the shortlist's f16 rows
                bytes_per_row = args.dim + 8
                bytes_per_q = args.n * bytes_per_row + args.int8_shortlist * args.dim * 2
            else:
                bytes_per_row = args.dim * (2 if kp == "keys_f16" else 4)
                bytes_per_q = args.n * bytes_per_row
            rows.append({
                "mode": mode, "engine": name, "queries_per_s": q, "ratio_vs_faiss": q / base,
                "recall_vs_faiss": recall(ids[(name, mode)], ref, args.k),
                "bytes_per_query": bytes_per_q, "bytes_per_entry_scanned": bytes_per_row,
                "bandwidth_limit_qps": bw_rust * 1e9 / bytes_per_q,
            })

    nq = {"batch": len(queries), "single": len(singles)}
    print(f"\nExact k-NN, N = {args.n:,} x {args.dim}, k = {args.k}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.repeats} repeats (medians); CPU: {cpu_model()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"Read bandwidth ({args.threads} threads, Rust sum loop): {bw_rust:.1f} GB/s; "
          f"numpy copy (1 thread, read + write): {bw_numpy:.1f} GB/s\n")
    print(f"int8: each query's {args.int8_shortlist} best rows by int8 score re-scored on the f16 keys\n")
    print("| mode | engine | keys | bytes per entry scanned | queries/s | ratio vs faiss | recall@k vs faiss | bandwidth limit, q/s (bytes read per query) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        # A batch is bound by arithmetic, not by reading the keys once.
        limit = (f"{r['bandwidth_limit_qps']:.1f} ({r['bytes_per_query'] / 1e6:.0f} MB/query)"
                 if r["mode"] == "single" else "-")
        print(f"| {r['mode']} ({nq[r['mode']]} q) | {r['engine'].split()[0]} | {r['engine'].split()[1]} | "
              f"{r['bytes_per_entry_scanned']} | {r['queries_per_s']:.1f} | {r['ratio_vs_faiss']:.2f}x | {r['recall_vs_faiss']:.4f} | {limit} |")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"args": vars(args), "cpu": cpu_model(), "bandwidth_gb_s": bw_rust,
                       "numpy_copy_gb_s": bw_numpy, "rows": rows,
                       "qps": {f"{e}/{m}": v for (e, m), v in qps.items()}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
