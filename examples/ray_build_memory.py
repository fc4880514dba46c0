#!/usr/bin/env python3
"""Build one ramem memory in N parts as Ray tasks, then merge the parts.

Each task runs `ramem memory build --shard I/N` over the same input: part I
of N of the input's items, in order, into a memory of its own. When every
part is built, `ramem memory merge` joins them into one memory holding the
rows a single `ramem memory build` would have written, in the same order.
A task that fails is retried by Ray; a part interrupted half-way resumes
where it stopped, since `memory build` is resumable.

    python3 examples/ray_build_memory.py --parts 3 --memory mem/ -- \\
        --input "idx:/usr/share/datasets/fashion-mnist;names=fashion-mnist" --values image

Everything after `--` goes to each `ramem memory build`. Without
`--address` the script starts a local Ray cluster on loopback (2 CPUs) and
stops it at the end; with `--address` (or RAY_ADDRESS) it joins a running
one, whose nodes must see the same paths (shared storage) and have the
`ramem` binary at `--ramem-bin`.
"""

import argparse
import os
import subprocess
import sys
import time

import ray

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@ray.remote(num_cpus=1, max_retries=2)
def build_part(ramem, index, parts, part_dir, build_args, threads):
    """One part of the memory; returns its directory."""
    started = time.time()
    cmd = [ramem, "memory", "build", "--memory", part_dir, "--shard", f"{index}/{parts}",
           "--threads", str(threads), *build_args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"part {index}/{parts} failed:\n{done.stderr}")
    return part_dir, time.time() - started


def main():
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, required=True, help="how many parts (Ray tasks)")
    ap.add_argument("--memory", required=True, help="the merged memory (a new directory)")
    ap.add_argument("--parts-dir", help="where the parts go (default: MEMORY.parts/)")
    ap.add_argument("--ramem-bin", default=os.path.join(ROOT, "target/release/ramem"))
    ap.add_argument("--threads", type=int, default=1, help="worker threads of each part")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="a running Ray cluster (default: start a local one)")
    args = ap.parse_args(sys.argv[1:split])
    build_args = sys.argv[split + 1:]
    if args.parts < 1:
        sys.exit("--parts must be at least 1")
    ramem = os.path.abspath(args.ramem_bin)
    memory = os.path.abspath(args.memory.rstrip("/"))
    parts_dir = os.path.abspath(args.parts_dir or memory + ".parts")
    os.makedirs(parts_dir, exist_ok=True)

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        started = time.time()
        tasks = [build_part.remote(ramem, i, args.parts, os.path.join(parts_dir, f"part-{i}"),
                                   build_args, args.threads)
                 for i in range(args.parts)]
        built = ray.get(tasks)
        for (part, seconds), i in zip(built, range(args.parts)):
            print(f"part {i}/{args.parts}: {part} in {seconds:.1f} s", flush=True)
    finally:
        ray.shutdown()
    merged = subprocess.run([ramem, "memory", "merge", "--out", memory,
                             *[part for part, _ in built]], capture_output=True, text=True)
    if merged.returncode != 0:
        sys.exit(f"the merge failed:\n{merged.stderr}")
    print(f"merged {args.parts} parts into {memory} in {time.time() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
