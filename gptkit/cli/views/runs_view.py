"""How `gptkit runs` looks: the table of runs, their validation curves drawn together as text, and
the same curves as an SVG picture.

Owns the layout only: the numbers come from `checkpoint.run_summary` and `checkpoint.val_curve`.
The table is a rich table at a terminal and aligned plain columns otherwise (scripts take --json);
the text plot gives each run its own marker (and colour at a terminal), so it reads in a log file
too. The SVG is written by hand (a few polylines, axes and a legend), so it is small, has no
dependency, and is the same bytes for the same curves.
"""

from __future__ import annotations

import bisect
import math
import time
from html import escape
from typing import Any

HEADERS = ("run", "updated", "steps", "tokens", "params", "tokenizer", "best val", "bits/char", "time")
MARKERS = "•×+o*#@%"
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")  # tab10
TERMINAL_COLOURS = ("blue", "red", "green", "yellow", "magenta", "cyan", "bright_red", "bright_blue")


def _count(n: int | None) -> str:
    """12,345 -> 12.3k; 3,400,000 -> 3.40M."""
    if n is None:
        return "-"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}" if n < 100 * size else f"{n / size:.0f}{unit}"
    return str(n)


def _duration(seconds: float | None) -> str:
    """m:ss, or h:mm:ss, as train's progress lines write it."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def cells(run: dict[str, Any]) -> tuple[str, ...]:
    """One run as the table's cells; an unreadable checkpoint says so in place of its numbers."""
    updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["updated"]))
    if "error" in run:
        return (run["name"], updated, "unreadable: " + run["error"])
    best, bpc = run.get("best_val_loss"), run.get("best_val_bpc")
    return (run["name"], updated, f"{run['step']:,}" if run.get("step") is not None else "-",
            _count(run.get("tokens_seen")), _count(run.get("params")), f"{run['tokenizer']} ({run['vocab_size']:,})",
            "-" if best is None else f"{best:.4f}", "-" if bpc is None else f"{bpc:.3f}", _duration(run.get("elapsed")))


def plain_table(runs: list[dict[str, Any]]) -> str:
    """Aligned columns with a header line; an unreadable run's message runs on from its third column."""
    rows = [HEADERS] + [cells(r) for r in runs]
    full = [r for r in rows if len(r) == len(HEADERS)]
    widths = [max(len(r[i]) for r in (rows if i < 2 else full)) for i in range(len(HEADERS))]
    right = {2, 3, 4, 6, 7, 8}
    lines = []
    for r in rows:
        parts = [c.rjust(widths[i]) if i in right and len(r) == len(HEADERS) else c.ljust(widths[i])
                 for i, c in enumerate(r[:-1])] + [r[-1]]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def rich_table(console: Any, runs: list[dict[str, Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold", caption="best val: nats/token (and bits/char) at the best evaluation; "
                  "newest first")
    for i, name in enumerate(HEADERS):
        table.add_column(name, justify="left" if i in (0, 1, 5) else "right", no_wrap=i < 2)
    rows = [cells(r) for r in runs]
    for c in rows:
        if len(c) == len(HEADERS):
            table.add_row(*c)
    console.print(table)
    for c in rows:
        if len(c) != len(HEADERS):
            console.print(Text(f"{c[0]} ({c[1]}): {c[2]}", style="red"))


# ------------------------------------------------------------------------------------------------
# The curves


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round numbers spanning [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    span = (hi - lo) or abs(hi) or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"


def _at(pts: list[tuple[float, float]], x: float) -> float | None:
    """A curve's value at x, joining its evaluations by straight lines; None outside them."""
    if not pts[0][0] <= x <= pts[-1][0]:
        return None
    j = min(bisect.bisect_right([p[0] for p in pts], x), len(pts) - 1)
    (xa, ya), (xb, yb) = pts[j - 1] if j else pts[0], pts[j]
    return yb if xb == xa else ya + (yb - ya) * (x - xa) / (xb - xa)


def text_plot(curves: dict[str, list[tuple[float, float]]], y_label: str, x_label: str = "step",
              width: int = 64, height: int = 14, colour: bool = False) -> str:
    """The curves on one grid of characters, one marker per run, y labelled on the left, x below, and
    a legend. `colour`: rich markup colouring each run's marker (for a terminal)."""
    xs = [x for c in curves.values() for x, _ in c]
    ys = [y for c in curves.values() for _, y in c]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, (y0, y1) = (x1 if x1 > x0 else x0 + 1), ((y0 - 0.5, y1 + 0.5) if y0 == y1 else (y0, y1))
    grid = [[" "] * width for _ in range(height)]

    def row(y: float) -> int:
        return height - 1 - round((y - y0) / (y1 - y0) * (height - 1))

    marks = []
    for i, pts in enumerate(curves.values()):
        mark = MARKERS[i % len(MARKERS)]
        marks.append(f"[{TERMINAL_COLOURS[i % len(TERMINAL_COLOURS)]}]{mark}[/]" if colour else mark)
        for c in range(width):
            y = _at(pts, x0 + (x1 - x0) * c / (width - 1))
            if y is not None:
                grid[row(y)][c] = marks[-1]
        for x, y in pts:  # every evaluation shows, even one that falls between two columns
            grid[row(y)][round((x - x0) / (x1 - x0) * (width - 1))] = marks[-1]
    labels = {row(t): _fmt(t) for t in _ticks(y0, y1, 5)}
    lines = [y_label] + [f"{labels.get(r, ''):>8} │{''.join(cells)}" for r, cells in enumerate(grid)]
    left, right = _fmt(x0), _fmt(x1)
    lines += [" " * 9 + "└" + "─" * width, " " * 10 + left + right.rjust(width - len(left)) + f"  {x_label}",
              " " * 10 + "   ".join(f"{m} {name}" for m, name in zip(marks, curves, strict=True))]
    return "\n".join(lines) + "\n"


def svg_plot(curves: dict[str, list[tuple[float, float]]], y_label: str, x_label: str = "step",
             title: str = "validation loss") -> str:
    """The same curves as an SVG line chart: axes with round ticks, light grid lines, one coloured
    line with dots per run, and a legend."""
    W, H, L, R, T, B = 720, 420, 70, 170, 40, 50  # size and margins (left, right for the legend, top, bottom)
    points = [p for c in curves.values() for p in c]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xt, yt = _ticks(min(xs), max(xs), 6), _ticks(min(ys), max(ys), 6)
    pad = 0.03 * ((max(ys) - min(ys)) or 1.0)  # no point sits on an axis
    x0, x1 = min(xt[0], min(xs)), max(xt[-1], max(xs))
    y0, y1 = min(yt[0], min(ys) - pad), max(yt[-1], max(ys) + pad)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def px(x: float) -> float:
        return round(L + (x - x0) / (x1 - x0) * (W - L - R), 1)

    def py(y: float) -> float:
        return round(H - B - (y - y0) / (y1 - y0) * (H - T - B), 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>']
    for t in yt:
        out.append(f'<line x1="{L}" y1="{py(t)}" x2="{W - R}" y2="{py(t)}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{L - 6}" y="{py(t) + 4}" text-anchor="end">{_fmt(t)}</text>')
    for t in xt:
        out.append(f'<line x1="{px(t)}" y1="{T}" x2="{px(t)}" y2="{H - B}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{px(t)}" y="{H - B + 16}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<path d="M{L},{T} V{H - B} H{W - R}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(16,{(T + H - B) / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(y_label)}</text>')
    for i, (name, pts) in enumerate(curves.items()):
        c = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(x)},{py(y)}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        out += [f'<circle cx="{px(x)}" cy="{py(y)}" r="2.5" fill="{c}"/>' for x, y in pts]
        ly = T + 10 + 20 * i
        out.append(f'<line x1="{W - R + 16}" y1="{ly}" x2="{W - R + 40}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{W - R + 46}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
