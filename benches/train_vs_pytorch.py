#!/usr/bin/env python3
"""Training speed of the memory attention module: ramem vs PyTorch CPU, side by side.

The same module, shapes and optimiser on both sides: batch 256, k = 32
neighbours, d = 1280 (queries, keys and values), hidden 512, 8 heads, one
layer, the query included as an attended item, RAC-style fusion with a
query-only branch, dropout 0.1, 1000 classes, NLL loss, AdamW. A step is
forward + loss + backward + optimiser update, on batches built before the
clock starts.

PyTorch runs the module written two ways, both timed:

  torch-a  idiomatic: every neighbour's key and value is projected to the
           hidden size and attended (what nn.MultiheadAttention does;
           O(k d hidden) per query);
  torch-b  the reassociated computation ramem uses: the query is mapped into
           key space per head (u_h = W_k,h^T W_q,h x, scores u_h . k_j) and
           the values are pooled before they are projected.

Both compute the same function with the same parameters; the script checks
that they give the same loss (dropout off) and, with --check, that PyTorch
and ramem agree on the loss of one batch from the same weights.

    cargo build --release -p ramem-model --examples
    python3 benches/train_vs_pytorch.py --rounds 5 --check

numpy and torch live in a throw-away venv (default
~/.cache/ramem/bench-venv-torch) that this script creates and re-executes
itself in; ramem never depends on them. See benches/README.md.

With --device cuda both sides train on GPU 0 instead: ramem's train_bench
from a `--features cuda` build (--bin; docs/GPU.md), PyTorch on its CUDA
device (with --no-venv and an interpreter whose torch has CUDA). The
agreement check stays on the CPU, where ramem's dumped weights and batch are
compared.
"""

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

import benchkit
from benchkit import cpu_model, log, median

CACHE = os.path.join(os.environ.get("RAMEM_HOME", os.path.expanduser("~/.cache/ramem")))
VENV_PACKAGES = ["numpy", "torch"]
IN_VENV_MARK = "RAMEM_TRAIN_BENCH_IN_VENV"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_venv_and_reexec(args) -> None:
    """Create the venv if needed, then re-execute this script inside it."""
    benchkit.ensure_venv_and_reexec(__file__, args.venv, VENV_PACKAGES, IN_VENV_MARK, args.threads, force_threads=True)




def read_safetensors(path):
    """name -> numpy array, for the f32/i64 files candle writes."""
    import numpy as np

    dtypes = {"F32": np.float32, "I64": np.int64, "U32": np.uint32}
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"]).copy()
    return out


def build_module(torch, args, reassociated):
    nn = torch.nn
    F = torch.nn.functional
    d, dv, hidden, heads, classes = args.dim, args.dim, args.hidden, args.heads, args.classes
    e = hidden // heads
    p_drop = 0.1

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w_q = nn.Linear(hidden, hidden)
            self.w_k = nn.Linear(d, hidden, bias=False)
            self.w_v = nn.Linear(dv, hidden)
            self.w_vq = nn.Linear(d, hidden, bias=False)
            self.w_o = nn.Linear(hidden, hidden)
            self.norm = nn.LayerNorm(hidden, eps=1e-5)

    class MemoryAttention(nn.Module):
        """The benchmarked configuration: one layer, query included, fusion, residual, dropout 0.1."""

        def __init__(self):
            super().__init__()
            self.input = nn.Linear(d, hidden)
            self.layer0 = Layer()
            self.classifier = nn.Linear(hidden, classes)
            self.query_branch = nn.Linear(d, classes)

        def attend_idiomatic(self, lay, x, q, keys, values):
            b, k, _ = keys.shape
            # Project every item (the query first, then the k neighbours) to the hidden size.
            kk = torch.cat([F.linear(q, lay.w_k.weight).unsqueeze(1), F.linear(keys, lay.w_k.weight)], 1)
            vv = torch.cat([F.linear(q, lay.w_vq.weight).unsqueeze(1), F.linear(values, lay.w_v.weight)], 1)
            qh = lay.w_q(x).view(b, heads, e)
            kk = kk.view(b, k + 1, heads, e)
            vv = vv.view(b, k + 1, heads, e)
            scores = torch.einsum("bhe,bjhe->bhj", qh, kk) / math.sqrt(e)
            w = F.dropout(torch.softmax(scores, -1), p_drop, self.training)
            out = torch.einsum("bhj,bjhe->bhe", w, vv).reshape(b, hidden) + lay.w_v.bias
            return lay.w_o(out)

        def attend_reassociated(self, lay, x, q, keys, values):
            b, k, _ = keys.shape
            qh = lay.w_q(x).view(b, heads, e).transpose(0, 1)  # (H, B, e)
            u = torch.bmm(qh, lay.w_k.weight.view(heads, e, d)).transpose(0, 1)  # (B, H, d)
            scores = torch.bmm(u, keys.transpose(1, 2))  # (B, H, k)
            self_score = (u * q.unsqueeze(1)).sum(-1, keepdim=True)
            scores = torch.cat([self_score, scores], -1) / math.sqrt(e)
            w = F.dropout(torch.softmax(scores, -1), p_drop, self.training)
            pooled = torch.bmm(w[:, :, 1:], values).transpose(0, 1)  # (H, B, dv)
            wv = lay.w_v.weight.view(heads, e, dv).transpose(1, 2)  # (H, dv, e)
            out = torch.bmm(pooled, wv).transpose(0, 1)  # (B, H, e)
            out = out + lay.w_vq(q).view(b, heads, e) * w[:, :, :1]
            return lay.w_o(out.reshape(b, hidden) + lay.w_v.bias)

        def forward(self, q, keys, values):
            # As ramem: the query standardised in the step; keys and values
            # arrive standardised (prepared once with the batches; ramem folds
            # the rows' moments into its arithmetic instead).
            q = standardize(torch, q)
            lay = self.layer0
            x = self.input(q)
            attend = self.attend_reassociated if reassociated else self.attend_idiomatic
            att = F.dropout(attend(lay, x, q, keys, values), p_drop, self.training)
            x = lay.norm(x + att)
            p1 = torch.softmax(self.classifier(x), -1)
            p2 = torch.softmax(self.query_branch(q), -1)
            return torch.log((p1 + p2) * 0.5 + 1e-12)

    return MemoryAttention()


def make_optimizer(torch, model):
    # As ramem: weight decay on matrices only.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.999), eps=1e-8)


def standardize(torch, t):
    """Each vector shifted to zero mean and scaled to unit variance (idempotent)."""
    c = t - t.mean(-1, keepdim=True)
    return c / torch.sqrt(c.pow(2).mean(-1, keepdim=True) + 1e-5)


def random_batches(torch, args, n):
    g = torch.Generator().manual_seed(args.seed)

    def unit(*shape):
        x = torch.randn(*shape, generator=g)
        return x / x.norm(dim=-1, keepdim=True)

    return [(unit(args.batch, args.dim), standardize(torch, unit(args.batch, args.k, args.dim)),
             standardize(torch, unit(args.batch, args.k, args.dim)),
             torch.randint(0, args.classes, (args.batch,), generator=g)) for _ in range(n)]


def torch_round(torch, model, opt, batches, args):
    F = torch.nn.functional
    model.train()
    times = []
    for step in range(args.warmup + args.steps):
        q, keys, values, labels = batches[step % len(batches)]
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.nll_loss(model(q, keys, values), labels)
        loss.backward()
        opt.step()
        # Reading the loss also waits for the GPU's queued work.
        loss.item()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    return {"steps_per_s": len(times) / sum(times), "ms_per_step": 1e3 * median(times)}


def run_ramem(args, dump=None, elementwise_threads=1, step="native"):
    cmd = [args.bin, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--k", str(args.k), "--dim", str(args.dim), "--hidden", str(args.hidden), "--heads", str(args.heads),
           "--classes", str(args.classes), "--threads", str(args.threads), "--seed", str(args.seed),
           "--elementwise-threads", str(elementwise_threads), "--device", args.device, "--step", step]
    if dump:
        cmd += ["--dump", dump]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr.strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def check_agreement(torch, args, work):
    """Loss of one batch, dropout off: torch-a vs torch-b vs ramem, same weights."""
    F = torch.nn.functional
    res = run_ramem(argparse.Namespace(**{**vars(args), "steps": 1, "warmup": 0, "device": "cpu"}), dump=work)
    weights = read_safetensors(os.path.join(work, "weights.safetensors"))
    batch = read_safetensors(os.path.join(work, "batch.safetensors"))
    q, keys, values = (torch.from_numpy(batch[n]) for n in ("queries", "keys", "values"))
    # ramem's batches carry L2-normalised rows and standardises them inside
    # its arithmetic; the peer takes them standardised.
    keys, values = standardize(torch, keys), standardize(torch, values)
    labels = torch.from_numpy(batch["labels"])
    losses = {}
    for name, reassoc in (("torch-a", False), ("torch-b", True)):
        m = build_module(torch, args, reassoc)
        state = m.state_dict()
        missing = set(state) - set(weights)
        if missing:
            raise SystemExit(f"ramem's weights lack {sorted(missing)}")
        m.load_state_dict({k: torch.from_numpy(weights[k]) for k in state})
        m.eval()
        with torch.no_grad():
            losses[name] = F.nll_loss(m(q, keys, values), labels).item()
    losses["ramem"] = res["eval_loss"]
    # The hand-written step's loss on the same batch (dropout off).
    losses["ramem-native"] = res["eval_loss_native"]
    return losses


def where(torch, args):
    """What both engines trained on, in words."""
    if args.device == "cuda":
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {cpu_model()}"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and engine")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="also compare losses with ramem on the same weights")
    ap.add_argument("--skip-idiomatic", action="store_true", help="time torch-b only")
    ap.add_argument("--also-autograd", action="store_true",
                    help="also time ramem's autograd step (engine ramem-autograd; ramem runs its native step)")
    ap.add_argument("--also-candle-pool", action="store_true",
                    help="also time ramem with candle's element-wise pool at --threads (engine ramem-pool)")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                  "release", "examples", "train_bench"))
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where both engines train (cuda: GPU 0; the agreement check stays on the CPU)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--venv", default=os.path.join(CACHE, "bench-venv-torch"))
    ap.add_argument("--no-venv", action="store_true", help="use the current interpreter")
    return ap.parse_args(argv)


def main() -> int:
    args = parse_args()
    if not args.no_venv:
        ensure_venv_and_reexec(args)
    import torch

    if not os.path.exists(args.bin):
        log(f"no ramem binary at {args.bin}: cargo build --release -p ramem-model --examples")
        return 2
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)

    # (a) and (b) are one function: same loss on the same weights, dropout off.
    small = argparse.Namespace(**{**vars(args), "batch": 16})
    q, keys, values, labels = random_batches(torch, small, 1)[0]
    ma, mb = build_module(torch, args, False), build_module(torch, args, True)
    mb.load_state_dict(ma.state_dict())
    ma.eval(), mb.eval()
    with torch.no_grad():
        la = torch.nn.functional.nll_loss(ma(q, keys, values), labels).item()
        lb = torch.nn.functional.nll_loss(mb(q, keys, values), labels).item()
    log(f"torch-a vs torch-b, same weights, dropout off: loss {la:.6f} vs {lb:.6f}")
    if abs(la - lb) > 1e-4:
        log("the two PyTorch forms disagree")
        return 1
    agreement = None
    if args.check:
        with tempfile.TemporaryDirectory(prefix="train-bench-") as work:
            agreement = check_agreement(torch, args, work)
        log("same weights and batch, dropout off: " + ", ".join(f"{k} {v:.6f}" for k, v in agreement.items()))
        if max(abs(agreement[k] - agreement["torch-b"]) for k in ("ramem", "ramem-native")) > 1e-3:
            log("ramem and PyTorch disagree")
            return 1

    engines = (["ramem"] + (["ramem-autograd"] if args.also_autograd else [])
               + (["ramem-pool"] if args.also_candle_pool else []) + ["torch-b"]
               + ([] if args.skip_idiomatic else ["torch-a"]))
    device = torch.device(args.device)
    models = {}
    for name in (e for e in engines if e.startswith("torch")):
        m = build_module(torch, args, name == "torch-b").to(device)
        models[name] = (m, make_optimizer(torch, m))
    batches = [tuple(t.to(device) for t in batch) for batch in random_batches(torch, args, 4)]
    results = {name: [] for name in engines}
    for r in range(args.rounds):
        for name in engines:
            if name == "ramem":
                res = run_ramem(args)
            elif name == "ramem-autograd":
                res = run_ramem(args, step="autograd")
            elif name == "ramem-pool":
                res = run_ramem(args, elementwise_threads=args.threads, step="autograd")
            else:
                m, opt = models[name]
                res = torch_round(torch, m, opt, batches, args)
            results[name].append(res)
            log(f"round {r + 1}/{args.rounds} {name:8}: {res['steps_per_s']:.3f} steps/s, "
                f"{res['ms_per_step']:.1f} ms/step")

    summary = {}
    for name in engines:
        summary[name] = {
            "steps_per_s": median([x["steps_per_s"] for x in results[name]]),
            "ms_per_step": median([x["ms_per_step"] for x in results[name]]),
            "min_steps_per_s": min(x["steps_per_s"] for x in results[name]),
            "max_steps_per_s": max(x["steps_per_s"] for x in results[name]),
        }
    def phase_medians(name):
        """Median ms per phase of a ramem engine (the native step has one
        phase for forward and backward; autograd, on a GPU too, has two)."""
        keys = ("loss_and_gradients_ms", "forward_ms", "backward_ms", "optimizer_ms")
        return {p: median([x[p] for x in results[name]]) for p in keys if results[name][0].get(p) is not None}

    def describe(ph):
        if "loss_and_gradients_ms" in ph:
            return f"forward and backward {ph['loss_and_gradients_ms']:.1f}, AdamW {ph['optimizer_ms']:.1f}"
        return f"forward {ph['forward_ms']:.1f}, backward {ph['backward_ms']:.1f}, AdamW {ph['optimizer_ms']:.1f}"

    phases = phase_medians("ramem")
    if "ramem-autograd" in results:
        phases["autograd"] = phase_medians("ramem-autograd")
    print(f"\nTraining steps, batch {args.batch}, k = {args.k}, d = {args.dim}, hidden {args.hidden}, "
          f"{args.heads} heads, {args.classes} classes, {args.threads} threads, {args.rounds} rounds x "
          f"{args.steps} steps (medians); torch {torch.__version__}; {where(torch, args)}; "
          f"load {os.getloadavg()[0]:.2f}\n")
    print("| engine | steps/s | ms/step | min..max steps/s | ramem / engine |")
    print("|---|---:|---:|---:|---:|")
    base = summary["ramem"]["steps_per_s"]
    for name in engines:
        s = summary[name]
        print(f"| {name} | {s['steps_per_s']:.3f} | {s['ms_per_step']:.1f} | "
              f"{s['min_steps_per_s']:.3f}..{s['max_steps_per_s']:.3f} | {base / s['steps_per_s']:.2f}x |")
    print(f"\nramem per phase (median ms): {describe(phases)}; gathering a batch "
          f"(untimed above) {median([x['gather_ms_per_batch'] for x in results['ramem']]):.1f} ms")
    if "autograd" in phases:
        print(f"ramem-autograd per phase (median ms): {describe(phases['autograd'])}")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"args": vars(args), "cpu": cpu_model(), "device": where(torch, args), "torch": torch.__version__,
                       "agreement": agreement, "summary": summary, "phases": phases,
                       "rounds": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
