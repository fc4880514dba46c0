#!/usr/bin/env python3
"""`ramem serve` under a bounded load on loopback, side by side with
`ramem predict` on the same images.

The first N Fashion-MNIST test images are written out as PNG files (as in
predict_vs_embed.py). One server is started (`ramem serve --addr
127.0.0.1:0`); rounds then alternate `ramem predict --jsonl` over the folder
(whole-process wall time) and a load of R requests (`POST /v1/classify`,
the raw PNG bytes) from C concurrent clients, each with its own keep-alive
connection, over the same images round-robin. The load stops by itself
after R requests. Reported: errors (any status but 200, or a failed
connection), requests/s, p50 and p99 latency, and the ratio of the
server's images/s to `ramem predict`'s (medians over the rounds). The
server also answers `/metrics`; its batch-size histogram is reported.

    cargo build --release -p ramem
    python3 benches/serve_vs_predict.py --model models/mam --requests 2000 --clients 16

Standard library only; ramem never depends on it. See benches/README.md.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time

from benchkit import cpu_model, log, median
from predict_vs_embed import export_test_images, timed

CACHE = os.environ.get("RAMEM_HOME", os.path.expanduser("~/.cache/ramem"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(ramem, model, memory, threads, extra):
    cmd = [ramem, "serve", "--model", model, "--addr", "127.0.0.1:0", "--log", "warn",
           "--threads", str(threads), *memory, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.match(r"listening on http://(\S+)", line)
    if not m:
        proc.kill()
        sys.exit(f"the server did not start: {line!r}\n{proc.stderr.read()}")
    return proc, m.group(1)


def load(addr, images, requests, clients):
    """R requests from C clients; returns (seconds, latencies, errors)."""
    host, port = addr.rsplit(":", 1)
    latencies, errors = [], []
    lock = threading.Lock()
    next_request = [0]

    def client():
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        mine, failed = [], []
        while True:
            with lock:
                i = next_request[0]
                if i >= requests:
                    break
                next_request[0] += 1
            body = images[i % len(images)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/classify", body=body,
                             headers={"Content-Type": "image/png"})
                response = conn.getresponse()
                payload = response.read()
                if response.status != 200:
                    failed.append(f"{response.status}: {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as e:
                failed.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
            mine.append(time.perf_counter() - start)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    cpu = time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load.client_cpu_seconds = time.process_time() - cpu
    return time.perf_counter() - start, latencies, errors


def percentile(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def worker_metrics(addr):
    """Mean batch size, batches, and the worker's busy seconds so far."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    count = values.get("ramem_batch_size_count")
    mean = values["ramem_batch_size_sum"] / count if count else float("nan")
    return mean, count, values.get("ramem_worker_busy_seconds_total", float("nan"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model bundle from `ramem train`")
    ap.add_argument("--memory", help="the memory to use (default: the model's)")
    ap.add_argument("--ramem-bin", default=os.path.join(ROOT, "target/release/ramem"))
    ap.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--serve-args", default="", help="more `ramem serve` flags, one string")
    ap.add_argument("--workdir", default=os.path.join(CACHE, "bench-predict"))
    ap.add_argument("--json-out")
    args = ap.parse_args()
    ramem = args.ramem_bin
    os.makedirs(args.workdir, exist_ok=True)
    folder = os.path.join(args.workdir, f"fashion-mnist-test-{args.images}")
    export_test_images(args.idx, folder, args.images)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    images = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as fh:
            images.append(fh.read())
    memory = ["--memory", args.memory] if args.memory else []
    threads = ["--threads", str(args.threads)]

    server, addr = start_server(ramem, args.model, memory, args.threads, args.serve_args.split())
    try:
        # One short warm-up load: first requests pay page faults and pools.
        load(addr, images, min(64, args.requests), args.clients)
        predict_s, serve_s, rounds = [], [], []
        busy_before = worker_metrics(addr)[2]
        for r in range(args.rounds):
            with open(os.path.join(args.workdir, "predict.jsonl"), "w") as fh:
                s, _ = timed([ramem, "predict", "--model", args.model, *memory, "--input",
                              folder, "--jsonl", "--log", "warn", *threads], stdout=fh)
            predict_s.append(s)
            seconds, latencies, errors = load(addr, images, args.requests, args.clients)
            serve_s.append(seconds)
            busy_after = worker_metrics(addr)[2]
            busy, busy_before = busy_after - busy_before, busy_after
            rounds.append({
                "seconds": seconds,
                "requests_per_s": args.requests / seconds,
                "p50_ms": 1000 * percentile(latencies, 50),
                "p99_ms": 1000 * percentile(latencies, 99),
                "errors": len(errors),
                "first_errors": errors[:5],
                "worker_busy": busy / seconds,
                # The clients run on the same cores as the server.
                "client_cpu_share": load.client_cpu_seconds / (seconds * os.cpu_count()),
            })
            log(f"round {r + 1}: predict {s:.2f} s ({args.images / s:.1f} images/s); "
                f"serve {args.requests / seconds:.1f} requests/s, p50 "
                f"{rounds[-1]['p50_ms']:.0f} ms, p99 {rounds[-1]['p99_ms']:.0f} ms, "
                f"{len(errors)} errors, worker busy {100 * busy / seconds:.0f}% of the time, "
                f"clients {100 * rounds[-1]['client_cpu_share']:.0f}% of the CPU")
        mean_batch, batches, _ = worker_metrics(addr)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    predict_rate = args.images / median(predict_s)
    serve_rate = args.requests / median(serve_s)
    errors = sum(r["errors"] for r in rounds)
    report = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "images": args.images,
        "requests": args.requests,
        "clients": args.clients,
        "model": args.model,
        "predict_seconds": predict_s,
        "predict_images_per_s": predict_rate,
        "serve_rounds": rounds,
        "serve_images_per_s": serve_rate,
        "ratio_serve_over_predict": serve_rate / predict_rate,
        "errors": errors,
        "p50_ms": median([r["p50_ms"] for r in rounds]),
        "p99_ms": median([r["p99_ms"] for r in rounds]),
        "mean_batch": mean_batch,
        "worker_busy": median([r["worker_busy"] for r in rounds]),
        "client_cpu_share": median([r["client_cpu_share"] for r in rounds]),
        "batches": batches,
        "server_exit": server.returncode,
    }
    print(f"{args.requests} requests from {args.clients} clients, {args.images} images, "
          f"{args.threads} threads, {cpu_model()}")
    print(f"  predict {predict_rate:7.1f} images/s (median of {args.rounds})")
    print(f"  serve   {serve_rate:7.1f} requests/s: {serve_rate / predict_rate:.2f}x predict; "
          f"p50 {report['p50_ms']:.0f} ms, p99 {report['p99_ms']:.0f} ms; {errors} errors; "
          f"mean batch {mean_batch:.1f}, worker busy {100 * report['worker_busy']:.0f}%, "
          f"clients {100 * report['client_cpu_share']:.0f}% of the CPU")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(report, fh, indent=2)
    if errors:
        sys.exit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
