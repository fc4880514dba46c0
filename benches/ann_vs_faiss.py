#!/usr/bin/env python3
"""Approximate k-NN: ramem's HNSW vs faiss IndexHNSWFlat, side by side.

Same seeded clustered unit vectors for both (N points drawn around C random
centres, Gaussian noise, L2-normalised; queries from the same law), same
graph settings (M, efConstruction), same thread count; efSearch is swept and
rounds interleave the engines, medians reported. Ground truth: faiss
IndexFlatIP (exact). ramem runs as the example binary `hnsw_bench`
(crates/ramem-index/examples/hnsw_bench.rs) over a memory directory with f16
keys (ramem's default) and with f32 keys; faiss stores f32 vectors.

    cargo build --release -p ramem-index --example hnsw_bench
    python3 benches/ann_vs_faiss.py --n 200000 --dim 384 --centres 2000

Reported per engine: the recall@k vs queries/s curve, queries/s at recall
0.95 (interpolated on the curve, and at the smallest ef that reaches it),
the ratio to faiss, bytes per vector, build time.

numpy and faiss-cpu live in a throw-away venv (default
~/.cache/ramem/bench-venv-faiss) that this script creates and re-executes
itself in; ramem never depends on them. See benches/README.md.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import benchkit
from benchkit import cpu_model, log, median

CACHE = os.path.join(os.environ.get("RAMEM_HOME", os.path.expanduser("~/.cache/ramem")))
VENV_PACKAGES = ["numpy", "faiss-cpu"]
IN_VENV_MARK = "RAMEM_ANN_BENCH_IN_VENV"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_venv_and_reexec(args) -> None:
    """Create the venv if needed, then re-execute this script inside it."""
    benchkit.ensure_venv_and_reexec(__file__, args.venv, VENV_PACKAGES, IN_VENV_MARK, args.threads)




def clustered(rng, n, q, dim, centres, spread, chunk=50_000):
    """n + q unit vectors around `centres` random unit centres."""
    import numpy as np

    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((n + q, dim), dtype=np.float32)
    for s in range(0, n + q, chunk):
        m = min(chunk, n + q - s)
        which = rng.integers(0, centres, m)
        v = c[which] + (spread / math.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[s:s + m] = v
    return out[:n], out[n:]


def recall(ids, gt, k):
    hits = sum(len(set(a[:k]) & set(b[:k])) for a, b in zip(ids.tolist(), gt.tolist()))
    return hits / (len(gt) * k)


def at_recall(points, target):
    """(interpolated q/s, q/s and ef of the smallest ef reaching target) from
    (ef, recall, qps) points sorted by ef; None where the curve never reaches it."""
    reach = [p for p in points if p[1] >= target]
    if not reach:
        return None, None, None
    first = reach[0]
    interp = first[2]
    i = points.index(first)
    if i > 0 and points[i - 1][1] < target < first[1]:
        (_, r0, q0), (_, r1, q1) = points[i - 1], first
        t = (target - r0) / (r1 - r0)
        interp = math.exp(math.log(q0) + t * (math.log(q1) - math.log(q0)))
    return interp, first[2], first[0]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="key rows")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--centres", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre (a unit centre)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", default="10,16,24,32,48,64,96,128,192,256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per ef per round")
    ap.add_argument("--build-rounds", type=int, default=1,
                    help="builds per engine, interleaved (faiss, then each ramem key type, again); medians reported")
    ap.add_argument("--dtypes", default="f16,f32", help="ramem key types to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "examples", "hnsw_bench"))
    ap.add_argument("--workdir", default=None, help="keep the .npy files and memories here")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--venv", default=os.path.join(CACHE, "bench-venv-faiss"))
    ap.add_argument("--no-venv", action="store_true", help="use the current interpreter")
    return ap.parse_args(argv)


def main() -> int:
    args = parse_args()
    if not args.no_venv:
        ensure_venv_and_reexec(args)
    import numpy as np
    import faiss

    if not os.path.exists(args.bin):
        log(f"no ramem binary at {args.bin}: cargo build --release -p ramem-index --example hnsw_bench")
        return 2
    faiss.omp_set_num_threads(args.threads)
    work = args.workdir or tempfile.mkdtemp(prefix="ann-bench-")
    os.makedirs(work, exist_ok=True)
    efs = [int(e) for e in args.ef.split(",")]
    dtypes = [d for d in args.dtypes.split(",") if d]

    log(f"generating {args.n} x {args.dim} keys around {args.centres} centres, seed {args.seed}")
    rng = np.random.default_rng(args.seed)
    keys, queries = clustered(rng, args.n, args.queries, args.dim, args.centres, args.spread)
    paths = {name: os.path.join(work, f"{name}.npy") for name in ("keys", "queries", "gt")}
    np.save(paths["keys"], keys)
    np.save(paths["queries"], queries)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(keys)
    _, gt = flat.search(queries, args.k)
    np.save(paths["gt"], gt.astype(np.int64))
    del flat

    build_times = {}
    bytes_per_vector = {}

    def build_faiss():
        log(f"faiss IndexHNSWFlat M={args.m} efConstruction={args.ef_construction}: building")
        built = faiss.IndexHNSWFlat(args.dim, args.m, faiss.METRIC_INNER_PRODUCT)
        built.hnsw.efConstruction = args.ef_construction
        t = time.perf_counter()
        built.add(keys)
        seconds = time.perf_counter() - t
        build_times.setdefault("faiss f32", []).append(seconds)
        faiss_bytes = len(faiss.serialize_index(built)) / args.n
        bytes_per_vector["faiss f32"] = {"total": faiss_bytes, "vectors": 4 * args.dim,
                                         "graph": faiss_bytes - 4 * args.dim}
        log(f"faiss build: {seconds:.1f} s, {faiss_bytes:.0f} bytes/vector")
        return built

    def build_ramem(dt):
        mem = os.path.join(work, f"mem-{dt}")
        cmd = [args.bin, "--mode", "build", "--keys", paths["keys"], "--memory", mem, "--dtype", dt,
               "--m", str(args.m), "--ef-construction", str(args.ef_construction),
               "--threads", str(args.threads)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        name = f"ramem {dt}"
        build_times.setdefault(name, []).append(res["build_seconds"])
        g = res["graph_bytes_per_vector"]
        bytes_per_vector[name] = {"total": g + res["key_bytes_per_vector"], "vectors": res["key_bytes_per_vector"], "graph": g}
        log(f"{name} build: {res['build_seconds']:.1f} s, graph {g:.0f} bytes/vector")

    # Builds alternate between the engines, so a change in the machine's load
    # reaches them all alike; every build gives the same graph, the last one
    # is searched.
    for _ in range(max(1, args.build_rounds)):
        index = None  # free the previous faiss index before the next build
        index = build_faiss()
        for dt in dtypes:
            build_ramem(dt)
    builds = {name: median(times) for name, times in build_times.items()}

    engines = ["faiss f32"] + [f"ramem {dt}" for dt in dtypes]
    qps = {(e, ef): [] for e in engines for ef in efs}
    rec = {}
    for r in range(args.rounds):
        for name in engines:
            if name == "faiss f32":
                for ef in efs:
                    index.hnsw.efSearch = ef
                    index.search(queries[:64], args.k)
                    for _ in range(args.repeats):
                        t = time.perf_counter()
                        _, ids = index.search(queries, args.k)
                        qps[(name, ef)].append(len(queries) / (time.perf_counter() - t))
                    rec[(name, ef)] = recall(ids, gt, args.k)
            else:
                dt = name.split()[1]
                cmd = [args.bin, "--mode", "search", "--memory", os.path.join(work, f"mem-{dt}"),
                       "--queries", paths["queries"], "--gt", paths["gt"], "--k", str(args.k),
                       "--ef", ",".join(map(str, efs)), "--repeats", str(args.repeats),
                       "--threads", str(args.threads)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                for p in res["curve"]:
                    qps[(name, p["ef"])].extend(p["queries_per_s"])
                    rec[(name, p["ef"])] = p["recall"]
            log(f"round {r + 1}/{args.rounds} {name}: " + ", ".join(
                f"ef {ef} {rec[(name, ef)]:.3f}@{median(qps[(name, ef)]):.0f}" for ef in efs))

    curves = {e: [(ef, rec[(e, ef)], median(qps[(e, ef)])) for ef in efs] for e in engines}
    target = 0.95
    summary = {}
    for e in engines:
        interp, first_q, first_ef = at_recall(curves[e], target)
        summary[e] = {"qps_at_target_interp": interp, "qps_at_first_ef": first_q, "first_ef": first_ef}
    base = summary["faiss f32"]

    print(f"\nApproximate k-NN, N = {args.n:,} x {args.dim} around {args.centres} centres "
          f"(spread {args.spread}), {len(queries)} queries, k = {args.k}, M = {args.m}, "
          f"efConstruction = {args.ef_construction}, {args.threads} threads, {args.rounds} rounds x "
          f"{args.repeats} repeats (medians), {max(1, args.build_rounds)} interleaved build round(s) "
          f"(medians); faiss {faiss.__version__}; CPU: {cpu_model()}; "
          f"load {os.getloadavg()[0]:.2f}\n")
    print("recall@k / queries/s by efSearch:\n")
    print("| ef | " + " | ".join(engines) + " |")
    print("|---:|" + "---|" * len(engines))
    for i, ef in enumerate(efs):
        print(f"| {ef} | " + " | ".join(f"{curves[e][i][1]:.4f} @ {curves[e][i][2]:.0f}" for e in engines) + " |")
    print(f"\nAt recall@{args.k} = {target}:\n")
    print("| engine | q/s (interpolated) | ratio vs faiss | smallest ef reaching it | q/s there | ratio there | bytes/vector (keys + graph) | build s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for e in engines:
        s = summary[e]
        b = bytes_per_vector[e]
        ratio = (s["qps_at_target_interp"] / base["qps_at_target_interp"]
                 if s["qps_at_target_interp"] and base["qps_at_target_interp"] else float("nan"))
        ratio_first = (s["qps_at_first_ef"] / base["qps_at_first_ef"]
                       if s["qps_at_first_ef"] and base["qps_at_first_ef"] else float("nan"))
        fmt = lambda v: f"{v:.0f}" if v else "not reached"
        print(f"| {e} | {fmt(s['qps_at_target_interp'])} | {ratio:.2f}x | {s['first_ef'] or '-'} | "
              f"{fmt(s['qps_at_first_ef'])} | {ratio_first:.2f}x | {b['total']:.0f} ({b['vectors']:.0f} + {b['graph']:.0f}) | "
              f"{builds[e]:.1f} |")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"args": vars(args), "cpu": cpu_model(), "faiss": faiss.__version__,
                       "curves": curves, "summary": summary, "bytes_per_vector": bytes_per_vector,
                       "build_seconds": builds, "build_seconds_all": build_times,
                       "qps": {f"{e}/{ef}": v for (e, ef), v in qps.items()}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
