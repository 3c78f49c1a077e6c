"""What `gptkit inspect --neighbors --eval N` costs on the CPU default model, against its targets.

In a temporary folder (never kept):
  1. `gptkit train tinyshakespeare.txt --max-time 60s` (the CPU default model and preset);
  2. `gptkit inspect --neighbors --eval 1000 --json` twice: the first run encodes the training text
     and builds each block's FFN outputs into the run's cache file, the second reads that cache.
Prints each run's wall time and peak RSS as a ratio to its target (first run <= 5 minutes including
the cache, second <= 1 minute), the cache build and search times the command reports, and the top-1
agreement with the model of all blocks together and of the two baselines (unigram, longest suffix).
Each child's peak RSS comes from a parent of its own (RUSAGE_CHILDREN): data.py's `run`.
`--dry-run` does the same in seconds on tests/data's copy with 4 steps, --eval 50 and a 20,000-position
pool (checks the script, not speed); `--record` appends the figures to results.jsonl (see results.py).

    python benchmarks/neighbors.py [--eval 1000] [--train-time 60s] [--record]
    python benchmarks/neighbors.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = {False: ROOT.parent / "shared" / "data" / "tinyshakespeare.txt", True: ROOT / "tests" / "data" / "tinyshakespeare.txt"}
TARGETS = {"first": 300.0, "cached": 60.0}  # seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=int, default=1000, help="held-out positions the evaluation measures")
    ap.add_argument("--train-time", default="60s", help="how long the model trains first")
    ap.add_argument("--dry-run", action="store_true", help="tests/data's text, 4 steps, --eval 50: checks the script")
    ap.add_argument("--record", action="store_true", help="append the figures to benchmarks/results.jsonl")
    args = ap.parse_args()
    train = ["--max-time", args.train_time]
    if args.dry_run:
        args.eval, train = 50, ["--max-iters", "4", "--eval-iters", "2"]
    scan = ["--max-positions", "20000"] if args.dry_run else []  # the full run scans the whole training split
    text = TEXTS[args.dry_run]
    if not text.is_file():
        sys.exit(f"{text} not found (the full run reads ../shared/data; --dry-run needs only this repository)")
    from data import run  # beside this script: a child's time and peak RSS

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="gptkit-bench-neighbors-") as tmp_name:
        tmp = Path(tmp_name)
        shutil.copy(text, tmp / "tinyshakespeare.txt")
        train_s, _ = run(["train", "tinyshakespeare.txt", "--store", "store", "--run", "shakespeare", "-q", *train],
                         tmp, tmp / "train.out")
        print(f"trained the CPU default model on {text.name} in {train_s:.1f} s ({' '.join(train)})", flush=True)
        inspect = ["inspect", "shakespeare", "--store", "store", "--neighbors", "--eval", str(args.eval), "--json", *scan]
        figures: dict[str, float | int | bool] = {}
        for name in ("first", "cached"):
            seconds, peak = run(inspect, tmp, tmp / f"{name}.json")
            ev = json.loads((tmp / f"{name}.json").read_text(encoding="utf-8"))["eval"]
            top1 = {row["name"]: row["top1_agree"] for row in ev["rows"]}
            print(f"{name:6s} run: {seconds:6.1f} s = {seconds / TARGETS[name]:.2f}x its target of {TARGETS[name]:.0f} s"
                  f" | peak RSS {peak:5.0f} MB | pool {ev['seconds']['pool']:5.1f} s, search {ev['seconds']['search']:5.1f} s"
                  f" | cache {'built' if ev['cache']['built'] else 'read'} | {ev['pool_positions']:,} pool positions", flush=True)
            figures.update({f"{name} run s": round(seconds, 1), f"{name} x target": round(seconds / TARGETS[name], 3),
                            f"{name} peak RSS MB": round(peak), f"{name} pool s": round(ev["seconds"]["pool"], 1),
                            f"{name} search s": round(ev["seconds"]["search"], 1)})
        print(f"top-1 = model over {ev['positions']} held-out positions: all blocks {top1['all blocks']:.3f} | "
              f"longest suffix {top1['longest suffix']:.3f} | unigram {top1['unigram']:.3f}")
        figures.update({"positions": ev["positions"], "all blocks top-1=model": round(top1["all blocks"], 3),
                        "longest suffix top-1=model": round(top1["longest suffix"], 3),
                        "unigram top-1=model": round(top1["unigram"], 3)})
    if args.record and not args.dry_run:
        from results import record  # beside this script

        record(f"inspect --neighbors --eval {args.eval} (CPU default model, train tinyshakespeare --max-time "
               f"{args.train_time})", figures)


if __name__ == "__main__":
    main()
