"""Pieces every benchmark script here shares: the throw-away virtual
environment the peer libraries live in (created once, then the script
re-executes itself inside it), the CPU name for reports, and a median that
tolerates an empty list. ramem itself never imports any of this."""

import os
import platform
import statistics
import subprocess
import sys


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_venv_and_reexec(script: str, venv: str, packages, mark: str, threads: int,
                           upgrade_pip: bool = False, force_threads: bool = False) -> None:
    """Create the venv at `venv` with `packages` if needed (a stamp file marks
    a finished install), then re-execute `script` inside it with the same
    arguments. `mark` is the environment variable that says "already inside".
    BLAS thread variables get `threads` (only where unset, unless
    `force_threads`)."""
    if os.environ.get(mark) == "1":
        return
    venv = os.path.abspath(os.path.expanduser(venv))
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".ramem-bench-ready")
    if not os.path.exists(stamp):
        log(f"creating the benchmark venv at {venv} ({', '.join(packages)})")
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        if upgrade_pip:
            subprocess.run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", *packages], check=True)
        with open(stamp, "w") as fh:
            fh.write("\n".join(packages) + "\n")
    env = dict(os.environ)
    env[mark] = "1"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if force_threads:
            env[var] = str(threads)
        else:
            env.setdefault(var, str(threads))
    os.execve(py, [py, os.path.abspath(script), *sys.argv[1:]], env)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median(xs):
    return statistics.median(xs) if xs else float("nan")
