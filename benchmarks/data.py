"""What training on people's own data costs: `gptkit train` on a big text, a folder of many small files,
and `gptkit tokenize --out` against tiktoken, each against a baseline measured in the same run.

Builds its texts in a temporary folder from the corpora in ../shared/data (English, Shakespeare and
Korean, repeated; never kept), then:
  1. `gptkit train BIG --max-iters 1` (a 1-layer model, --tokenizer gpt2) and `gptkit tokenize BIG
     --out DIR -t gpt2` on a --gb GB text (default 1): train's peak RSS beyond the same train command
     on a 1 MB text (what the model, torch and the interpreter take; target <= 300 MB), and train's wall
     time against tokenize's (target <= 1.2x: train adds torch, the model and one step, not a second
     pass over the text);
  2. `gptkit tokenize --out -t gpt2` on a folder of --files small files (default 10,000, --folder-mb
     200 MB in all, cut at line ends) against the same bytes as one file: MB/s (target >= 0.8x);
  3. tiktoken's `encode_ordinary_batch` on that one file's text, in memory, cut into ~1 MB pieces at
     the same safe boundaries: part 2's one-file command against it (target >= 0.9x), and a check that
     the dataset holds exactly tiktoken's ids. (`tokenize_speed.py`, kept beside this script, measures
     this alone, best of several interleaved runs, with the builder's in-process speed.)
Each child's peak RSS comes from a parent of its own (RUSAGE_CHILDREN), so this process's pages never
count. `--dry-run` does the same on a few MB from tests/data (the test suite runs it); `--record`
appends the figures to results.jsonl (see results.py).

    python benchmarks/data.py [--gb 1] [--files 10000] [--folder-mb 200] [--record]
    python benchmarks/data.py --dry-run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHIPPED = ROOT / "tests" / "data"
# the child's stdout goes to the file argv[1] names; the parent's last stdout line is the child's peak RSS
PEAK = ("import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'gptkit', *sys.argv[2:]], stdout=open(sys.argv[1], 'w'),"
        " stderr=subprocess.PIPE, text=True)\n"
        "sys.exit(p.stderr[-2000:]) if p.returncode else print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
TRAIN = ["--max-iters", "1", "--eval-iters", "1", "--n-layer", "1", "--n-head", "1", "--n-embd", "32",
         "--block-size", "64", "--batch-size", "2", "--tokenizer", "gpt2", "--device", "cpu", "-q"]


def sources(dry: bool) -> list[Path]:
    if dry:
        return [SHIPPED / "english.txt", SHIPPED / "tinyshakespeare.txt", SHIPPED / "korean.txt"]
    return [SHARED / "english" / "pride_and_prejudice.txt", SHARED / "tinyshakespeare.txt",
            SHARED / "korean" / "koconovel.txt"]


def make_text(path: Path, n_bytes: float, corpora: list[Path]) -> int:
    """The corpora, repeated, until the file holds at least n_bytes."""
    block = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in corpora)
    written = 0
    with open(path, "wb") as f:
        while written < n_bytes:
            f.write(block)
            written += len(block)
    return written


def make_folder(text: Path, folder: Path, n_files: int) -> None:
    """`text` cut at line ends into n_files files of about the same size, in a two-level tree."""
    data = text.read_bytes()
    start = 0
    for i in range(n_files):
        end = data.find(b"\n", max(start, (i + 1) * len(data) // n_files - 1)) + 1
        end = len(data) if i == n_files - 1 or end <= start else end
        sub = folder / f"{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:05d}.txt").write_bytes(data[start:end])
        start = end
    assert start == len(data) and all(p.stat().st_size for p in folder.rglob("*.txt"))


def run(args: list[str], cwd: Path, out: Path | str = os.devnull) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `python -m gptkit ARGS`, its stdout written to `out`."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, str(out), *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"gptkit {' '.join(args[:3])} failed: {proc.stderr.strip()}")
    return seconds, int(proc.stdout.split()[-1]) / 1024  # KiB on Linux


def tiktoken_baseline(path: Path) -> tuple[float, list[np.ndarray]]:
    """Seconds for tiktoken's encode_ordinary_batch over both sides of the split, and the ids
    (tokenize_speed.py's baseline, on this file's text)."""
    from tokenize_speed import baseline  # beside this script

    from gptkit.data.dataset import split_point

    text = path.read_text(encoding="utf-8")
    return baseline(text, split_point(text, 0.1), "gpt2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the big text for train vs tokenize")
    ap.add_argument("--files", type=int, default=10_000, help="files in the folder")
    ap.add_argument("--folder-mb", type=float, default=200.0, help="bytes in the folder, in all")
    ap.add_argument("--dry-run", action="store_true", help="a few MB from tests/data: checks the script, not speed")
    ap.add_argument("--record", action="store_true", help="append the figures to benchmarks/results.jsonl")
    args = ap.parse_args()
    if args.dry_run:
        args.gb, args.files, args.folder_mb = 0.004, 50, 2.0
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHIPPED / "tiktoken"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # children run this tree
    corpora = sources(args.dry_run)
    figures: dict[str, float | int | bool] = {}
    with tempfile.TemporaryDirectory(prefix="gptkit-bench-data-") as tmp_name:
        tmp = Path(tmp_name)
        big = make_text(tmp / "big.txt", args.gb * 1e9, corpora)
        make_text(tmp / "small.txt", 1e6, corpora)
        print(f"{big / 1e6:,.1f} MB text (English, Shakespeare, Korean repeated); {os.cpu_count()} CPUs", flush=True)
        tok_s, tok_mb = run(["tokenize", "big.txt", "--out", "ds", "-t", "gpt2", "-q"], tmp)
        _, base_mb = run(["train", "small.txt", "--store", "store", "--run", "small", *TRAIN], tmp)
        train_s, train_mb = run(["train", "big.txt", "--store", "store", "--run", "big", *TRAIN], tmp)
        extra = train_mb - base_mb
        print(f"tokenize --out: {tok_s:7.2f} s  {big / 1e6 / tok_s:6.2f} MB/s  peak RSS {tok_mb:6.0f} MB")
        print(f"train 1 step:   {train_s:7.2f} s  = {train_s / tok_s:.2f}x tokenize's time (target <= 1.2x)  "
              f"peak RSS {train_mb:6.0f} MB, {extra:+.0f} MB over the same on 1 MB (target <= 300 MB)")
        figures.update(text_mb=round(big / 1e6, 1), tokenize_s=round(tok_s, 2), train_s=round(train_s, 2),
                       train_vs_tokenize=round(train_s / tok_s, 3), train_peak_mb=round(train_mb),
                       train_extra_mb=round(extra))

        one = tmp / "one.txt"
        total = make_text(one, args.folder_mb * 1e6, corpora)
        make_folder(one, tmp / "folder", args.files)
        file_s, _ = run(["tokenize", "one.txt", "--out", "ds1", "-t", "gpt2", "-q"], tmp)
        folder_s, _ = run(["tokenize", "folder", "--out", "ds2", "-t", "gpt2", "-q"], tmp)
        file_rate, folder_rate = total / 1e6 / file_s, total / 1e6 / folder_s
        print(f"one file:       {file_s:7.2f} s  {file_rate:6.2f} MB/s ({total / 1e6:,.1f} MB)")
        print(f"{args.files:,} files:  {folder_s:7.2f} s  {folder_rate:6.2f} MB/s = {folder_rate / file_rate:.2f}x "
              "one file's (target >= 0.8x)")

        base_s, base_ids = tiktoken_baseline(one)
        from gptkit.data.dataset import load_dataset

        ds = load_dataset(tmp / "ds1")
        same = bool(np.array_equal(ds.train, base_ids[0]) and np.array_equal(ds.val, base_ids[1]))
        base_rate = total / 1e6 / base_s
        print(f"tiktoken encode_ordinary_batch (text in memory): {base_s:6.2f} s  {base_rate:6.2f} MB/s; "
              f"tokenize --out = {file_rate / base_rate:.2f}x (target >= 0.9x); ids identical: {same}")
        figures.update(folder_files=args.files, folder_mb=round(total / 1e6, 1), file_mbps=round(file_rate, 2),
                       folder_mbps=round(folder_rate, 2), folder_vs_file=round(folder_rate / file_rate, 3),
                       tiktoken_mbps=round(base_rate, 2), tokenize_vs_tiktoken=round(file_rate / base_rate, 3),
                       ids_identical=same)
        del ds, base_ids
    if not same:
        sys.exit("the dataset's ids differ from tiktoken's")
    if args.record and not args.dry_run:
        from results import record

        record("data.py (train on a big text, a folder of small files, tokenize vs tiktoken)", figures)


if __name__ == "__main__":
    main()
