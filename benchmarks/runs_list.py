"""How long `gptkit runs` takes on a store of many runs, against reading their tensors.

Trains one real run at the `baby` dims (10.7M parameters: last.safetensors with the optimizer state,
best.safetensors, metrics.jsonl; one step on tinyshakespeare, in a temporary store), links its files
into --runs run folders (hard links: no extra disk), then, interleaved, --repeat times each, the
fastest counting:
  1. `python -m gptkit runs --store S --json` in a subprocess, as a user runs it (target <= 0.3 s
     for 50 runs);
  2. `python -m gptkit --version`: the interpreter and the CLI's own start, which every command pays;
  3. in this process, `checkpoint.run_summary` of every run (headers only);
  4. the baseline: reading every run's last.safetensors whole, the least a listing that loads the
     tensors must do (the page cache is warm: the runs share one file, so this is memory speed, and
     a cold cache only widens the gap).
Prints each, and 4 / 3: what reading only the headers saves.

    python benchmarks/runs_list.py [--runs 50] [--repeat 3] [--record]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "tests" / "data" / "tinyshakespeare.txt"
ENV = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}


def gptkit(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gptkit", *args], check=True, env=ENV, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def make_store(store: Path, runs: int) -> None:
    gptkit("train", str(TEXT), "--preset", "baby", "--max-iters", "1", "--eval-iters", "1", "--run", "run-00",
           "--store", str(store), "-q")
    first = store / "run-00"
    for i in range(1, runs):
        run = store / f"run-{i:02d}"
        run.mkdir()
        for f in first.iterdir():
            if f.is_file():
                os.link(f, run / f.name)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of each measurement; the fastest counts")
    ap.add_argument("--record", action="store_true", help="append the figures to benchmarks/results.jsonl")
    args = ap.parse_args()
    from gptkit.checkpoint import list_runs, run_summary

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        make_store(store, args.runs)
        dirs = list_runs(store)
        size = (dirs[0] / "last.safetensors").stat().st_size
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, fn in (("command", lambda: gptkit("runs", "--store", str(store), "--json")),
                             ("startup", lambda: gptkit("--version")),
                             ("headers", lambda: timed(lambda: [run_summary(d) for d in dirs])),
                             ("tensors", lambda: timed(lambda: [(d / "last.safetensors").read_bytes() for d in dirs]))):
                best[name] = min(best.get(name, float("inf")), fn())
    print(f"{len(dirs)} runs, last.safetensors {size / 1e6:.1f} MB each")
    print(f"gptkit runs --json           {best['command']:.3f} s  (target <= 0.3 s for 50 runs)")
    print(f"gptkit --version (start-up)  {best['startup']:.3f} s")
    print(f"run_summary, every run       {best['headers']:.4f} s")
    print(f"every file read whole        {best['tensors']:.3f} s  (baseline)")
    print(f"headers only: {best['tensors'] / best['headers']:.1f}x faster than reading the tensors")
    if args.record:
        sys.path.insert(0, str(Path(__file__).parent))
        from results import record

        record("runs_list", {"runs": len(dirs), "checkpoint_mb": round(size / 1e6, 1),
                             "command_s": round(best["command"], 3), "startup_s": round(best["startup"], 3),
                             "headers_s": round(best["headers"], 4), "tensors_s": round(best["tensors"], 3)})


if __name__ == "__main__":
    main()
