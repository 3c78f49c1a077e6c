"""Draw the README's pictures with gptkit itself: an attention heatmap (`gptkit inspect --save`) and
validation curves (`gptkit runs --plot --save`).

    python docs/make_images.py                  # train the two runs (60 s each), draw into docs/img/
    python docs/make_images.py --store S --attention RUN --loss RUN,RUN --out DIR   # from existing runs

With no --store it trains, in a temporary store, the CPU default (`quick`) and nanoGPT's CPU recipe
(`tiny`) for the same wall time on tinyshakespeare (evaluating every 25 steps on 10 batches, so the
curves have points), and draws the heatmap from the `tiny` run. tests/test_docs.py runs it on the test session's
trained checkpoint, so it keeps working; the pictures checked in are from a run of the first form.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "To be, or not to b"
ATTENTION, LOSS = "readme-attention.svg", "readme-loss.svg"


def gptkit(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "gptkit", *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"gptkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def train_runs(store: Path, seconds: int) -> None:
    text = str(ROOT / "tests" / "data" / "tinyshakespeare.txt")
    for preset in ("quick", "tiny"):
        gptkit("train", text, "--preset", preset, "--max-time", f"{seconds}s", "--eval-interval", "25",
               "--eval-iters", "10", "--run", f"{preset}-{seconds}s", "--store", str(store), "-q")


def draw(store: Path, attention: str, loss: list[str], out: Path, layer: int, head: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    gptkit("inspect", attention, "--store", str(store), "-p", PROMPT, "--layer", str(layer), "--head", str(head),
           "--rows", "3", "--save", str(out / ATTENTION))
    gptkit("runs", *loss, "--store", str(store), "--plot", "--save", str(out / LOSS))
    return [out / ATTENTION, out / LOSS]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="use the runs in this store instead of training new ones")
    ap.add_argument("--attention", help="the run whose attention is drawn [default: the tiny run]")
    ap.add_argument("--loss", help="comma-separated runs whose curves are drawn [default: both runs]")
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--head", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=60, help="each run's training time when training")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = Path(tmp) / "store"
            train_runs(store, args.seconds)
        attention = args.attention or f"tiny-{args.seconds}s"
        loss = args.loss.split(",") if args.loss else [f"quick-{args.seconds}s", f"tiny-{args.seconds}s"]
        for path in draw(store, attention, loss, args.out, args.layer, args.head):
            print(path)
        if args.store is None:
            print(gptkit("runs", "--store", str(store)), end="")


if __name__ == "__main__":
    main()
