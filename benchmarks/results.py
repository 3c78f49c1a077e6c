"""Where benchmark figures go: one JSON line per run in `benchmarks/results.jsonl`, and
`benchmarks/RESULTS.md` rendered from it (the only place dated figures live).

Every row carries what makes a figure meaningful later: the date, the commit, the CPU model (the
development and CI machines change CPU over time), torch's thread count and version, and the GPU
when there is one. A script calls `record(name, figures)` when run with `--record`;
`python benchmarks/results.py` re-renders RESULTS.md from the JSON lines alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
JSONL = HERE / "results.jsonl"
MARKDOWN = HERE / "RESULTS.md"


def cpu_model() -> str:
    """The CPU's model name as the OS reports it, with its family/model numbers and the vector units
    that decide kernel speed (a VM often reports only "AMD EPYC"). Read here, in a benchmark, never by
    gptkit itself."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        units = [u for u in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if u in info.get("flags", "").split()]
        return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}"
                f"{', ' + ' '.join(units) if units else ''})")
    except (OSError, ValueError):
        pass
    try:  # macOS
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def record(benchmark: str, figures: dict[str, Any], note: str = "") -> dict[str, Any]:
    """Append one row for `benchmark` to results.jsonl and re-render RESULTS.md; returns the row."""
    row = {"benchmark": benchmark, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
           "commit": commit(), **machine(), "figures": figures}
    if note:
        row["note"] = note
    with open(JSONL, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    render()
    return row


def rows() -> list[dict[str, Any]]:
    if not JSONL.is_file():
        return []
    return [json.loads(line) for line in JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def render() -> str:
    """RESULTS.md: one table per benchmark, newest first; a row per run with its machine and figures."""
    out = ["# Benchmark results", "",
           "Rendered by `python benchmarks/results.py` from `results.jsonl` (each script appends its row with",
           "`--record`). Ratios are against a baseline measured in the same run; the machine is part of",
           "every figure.", ""]
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for r in rows():
        by_bench.setdefault(r["benchmark"], []).append(r)
    for bench, runs in sorted(by_bench.items()):
        keys: list[str] = []
        for r in runs:
            keys += [k for k in r["figures"] if k not in keys]
        out += [f"## {bench}", "", "| date (UTC) | commit | CPU | threads | torch | " + " | ".join(keys) + " | note |",
                "|" + "---|" * (len(keys) + 6)]
        for r in sorted(runs, key=lambda r: r["date"], reverse=True):
            cpu = r.get("cpu", "?") + (f" + {r['gpu']}" if r.get("gpu") else "")
            cells = [r["date"], r["commit"], cpu, r.get("threads", "?"), r.get("torch", "?"),
                     *(r["figures"].get(k, "") for k in keys), r.get("note", "")]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    text = "\n".join(out)
    MARKDOWN.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    sys.stdout.write(render())
