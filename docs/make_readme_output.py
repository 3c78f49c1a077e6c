"""Fill the README's terminal output with a real run: each ```console block of "Your first model in 60
seconds" and "Runs" is run in a fresh folder, in reading order, and its body becomes the command
and an excerpt of what it printed; the intro's excerpt is then cut from those blocks.

    python docs/make_readme_output.py            # rewrites README.md in place
    python docs/make_readme_output.py --dry-run  # prints the new README instead

Run it on a quiet machine: the numbers (steps in 60 s, losses) are the machine's. The excerpts keep
the lines tests/test_docs.py can check on a shorter run with the numbers let vary: the settings and
start lines, the evaluations, the summary, a sample's first four lines; never the loss plot, whose
shape is the run's own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = "<!-- test: skip:"


def excerpt(command: str, output: str) -> list[str]:
    """The lines of a command's output the README shows."""
    lines = [ln.rstrip() for ln in output.rstrip("\n").splitlines()]
    sub = command.split()[1]
    if sub == "train":
        evals = [ln for ln in lines if ln.startswith("step ") and "val loss" in ln and ln.endswith("*best")]
        keep = evals if len(evals) <= 4 else [*evals[:2], "…", evals[-1]]
        return [lines[0], lines[1], *keep, *[ln for ln in lines if ln.startswith(("done:", "saved to"))]]
    if sub == "inspect":
        return [*lines[:next(i for i, ln in enumerate(lines) if ln.startswith("tokenizer:")) + 1], "…"]
    if sub == "sample" and len(lines) > 4:
        return [*lines[:4], "…"]
    return lines


def run(command: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", "-c", "set -o pipefail; " + command], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed ({proc.returncode}):\n{proc.stdout}")
    return proc.stdout


def rewrite(text: str, cwd: Path, env: dict[str, str]) -> str:
    lines = text.splitlines()
    blocks: dict[str, list[str]] = {}  # command -> the block's new body
    out, i, intro_at = [], 0, None
    while i < len(lines):
        out.append(lines[i])
        if lines[i] == "```console":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if lines[i - 1].startswith(SKIP):
                intro_at = len(out)  # filled from the other blocks at the end
            else:
                command = lines[i + 1][2:]
                body = [f"$ {command}", *excerpt(command, run(command, cwd, env))]
                blocks[command] = body
                out += body
            out.append(lines[end])
            i = end
        i += 1
    if intro_at is not None:
        train = next(b for c, b in blocks.items() if c.startswith("gptkit train"))
        sample = next(b for c, b in blocks.items() if c.startswith("gptkit sample"))
        intro = [train[0], train[1], *[ln for ln in train if ln.startswith("done:")], *sample[:4]]
        out[intro_at:intro_at] = intro
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the new README instead of writing it")
    args = ap.parse_args()
    text = README.read_text(encoding="utf-8")  # each block's first line is its command; the rest is replaced
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = Path(tmp) / "bin"
        bin_dir.mkdir()
        (bin_dir / "gptkit").write_text(f"#!{sys.executable}\nfrom gptkit.cli import main\nmain()\n", encoding="utf-8")
        (bin_dir / "gptkit").chmod(0o755)
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(ROOT)}
        for var in ("GPTKIT_STORE", "GPTKIT_CHECKPOINTS"):
            env.pop(var, None)
        (Path(tmp) / "work").mkdir()
        new = rewrite(text, Path(tmp) / "work", env)
    if args.dry_run:
        sys.stdout.write(new)
    else:
        README.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
