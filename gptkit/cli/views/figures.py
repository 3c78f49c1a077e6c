"""Pictures of matrices as SVG heatmaps: attention weights, similarity maps, activations cut into heads.

Owns drawing: one or more panels side by side, each a matrix of numbers with its row and column
labels, an optional cut every `groups` columns (a head's slice of the width), the value in each cell
when the matrix is small, and the colour scale under it. Weights in [0, 1] use the viridis colours
of the terminal heatmaps; signed values (similarities, activations) a blue-white-red scale centred
on 0. It writes a file and prints nothing; it computes nothing it draws and takes plain nested
lists (a tensor's `.tolist()`). `gptkit inspect --save` keeps rich's own picture of the terminal view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from gptkit.cli.views.inspect_view import colour as viridis
from gptkit.fsio import atomic_write_bytes

LEVELS = 49  # colours a panel is quantised to (odd, so 0 on a signed scale is exactly white); one <path> each
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
BLUE, WHITE, RED = (59, 76, 192), (240, 240, 240), (180, 4, 38)


@dataclass
class Panel:
    """One matrix to draw. `lo`/`hi` fix the colour scale (default: the values' range; symmetric about 0
    when any value is negative)."""

    values: Sequence[Sequence[float]]
    title: str = ""
    rows: Sequence[str] = ()
    cols: Sequence[str] = ()
    lo: float | None = None
    hi: float | None = None
    groups: int = 0  # > 0: a cut every `groups` columns, labelled "head 0", "head 1", ...
    numbers: bool = False  # write each value in its cell
    causal: bool = False  # cells right of the diagonal are the masked future: drawn grey

    def scale(self) -> tuple[float, float]:
        flat = [v for row in self.values for v in row]
        lo, hi = min(flat), max(flat)
        if lo < 0:
            lo, hi = -max(-lo, hi), max(-lo, hi)
        lo = lo if self.lo is None else self.lo
        hi = hi if self.hi is None else self.hi
        return lo, hi if hi > lo else lo + 1.0


def diverging(t: float) -> str:
    """Blue (t=0) through white (0.5) to red (1)."""
    t = min(1.0, max(0.0, t))
    a, b, f = (BLUE, WHITE, t * 2) if t < 0.5 else (WHITE, RED, t * 2 - 1)
    r, g, bl = (round(x + (y - x) * f) for x, y in zip(a, b, strict=True))
    return f"rgb({r},{g},{bl})"


def _label_width(labels: Sequence[str], px: float) -> float:
    return max((len(s) for s in labels), default=0) * px


class _Canvas:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, x: float, y: float, s: str, size: float, anchor: str = "start", extra: str = "") -> None:
        self.parts.append(f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size:.1f}' text-anchor='{anchor}' "
                          f"{extra}>{escape(s)}</text>")

    def rect(self, x: float, y: float, w: float, h: float, fill: str, extra: str = "") -> None:
        self.parts.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' fill='{fill}' {extra}/>")


def _draw(c: _Canvas, p: Panel, x0: float, y0: float, cell: float) -> tuple[float, float]:
    """Draw panel p with its top-left corner at (x0, y0); return its width and height."""
    n_rows, n_cols = len(p.values), len(p.values[0])
    lo, hi = p.scale()
    paint = diverging if lo < 0 else viridis
    small = max(9.0, min(12.0, cell * 0.4))
    lw = _label_width(p.rows, small * 0.62) + (6 if p.rows else 0)
    tilt = bool(p.cols) and not p.groups and _label_width(p.cols, small * 0.62) > cell  # long labels: slanted
    top = small * 1.8 if p.title else 0
    top += _label_width(p.cols, small * 0.45) + small if tilt else small * 1.4 if p.cols or p.groups else 0
    gx, gy = x0 + lw, y0 + top
    if p.title:
        c.text(x0, y0 + small * 1.2, p.title, small * 1.15, extra="font-weight='bold'")
    runs: dict[int, list[str]] = {}
    for i, row in enumerate(p.values):
        for j, v in enumerate(row):
            if p.causal and j > i:
                c.rect(gx + j * cell, gy + i * cell, cell, cell, "rgb(215,215,215)")
                continue
            level = round((min(hi, max(lo, v)) - lo) / (hi - lo) * (LEVELS - 1))
            runs.setdefault(level, []).append(f"M{j} {i}h1v1h-1z")
    for level, cells in sorted(runs.items()):
        fill = paint(level / (LEVELS - 1))
        c.parts.append(f"<path transform='translate({gx:.1f},{gy:.1f}) scale({cell:g})' fill='{fill}' "
                       f"d='{''.join(cells)}'/>")
    if p.numbers:
        for i, row in enumerate(p.values):
            for j, v in enumerate(row):
                if not (p.causal and j > i):
                    t = (min(hi, max(lo, v)) - lo) / (hi - lo)
                    ink = "black" if (t > 0.6 if lo >= 0 else abs(t - 0.5) < 0.3) else "white"
                    c.text(gx + (j + 0.5) * cell, gy + (i + 0.5) * cell + small * 0.35, f"{v:.2f}", small * 0.9,
                           "middle", f"fill='{ink}'")
    for i, s in enumerate(p.rows):  # row labels no taller than a row
        c.text(gx - 4, gy + (i + 0.5) * cell + min(small, cell) * 0.35, s, min(small, cell * 1.1), "end")
    if p.cols and not p.groups:
        for j, s in enumerate(p.cols):
            x, y = gx + (j + 0.5) * cell, gy - small * 0.5
            c.text(x, y, s, small, "start" if tilt else "middle", f"transform='rotate(-50 {x:.1f} {y:.1f})'" if tilt else "")
    for g in range(n_cols // p.groups if p.groups else 0):
        if g:
            c.rect(gx + g * p.groups * cell - 0.75, gy - small * 1.2, 1.5, n_rows * cell + small * 1.2, "black")
        c.text(gx + (g + 0.5) * p.groups * cell, gy - small * 0.4, f"head {g}", small, "middle")
    # the colour scale: 24 steps from lo to hi, under the matrix
    by = gy + n_rows * cell + small * 0.8
    bw = min(n_cols * cell, 240.0) / 24
    for s in range(24):
        c.rect(gx + s * bw, by, bw + 0.3, small * 0.9, paint(s / 23))
    c.text(gx, by + small * 2.1, f"{lo:.2f}", small * 0.9)
    c.text(gx + 24 * bw, by + small * 2.1, f"{hi:.2f}", small * 0.9, "end")
    title_w = len(p.title) * small * 0.7
    return max(lw + n_cols * cell, title_w), by + small * 2.4 - y0


def save_heatmaps(path: str | Path, panels: Sequence[Panel] | Sequence[Sequence[Panel]], title: str = "",
                  cell: float | None = None) -> Path:
    """Draw the panels left to right (a list of lists: one line of panels each) under an optional title,
    and write them to `path` as SVG. Cells are `cell` pixels, by default as large as a line 760 wide allows."""
    lines = [list(line) for line in panels] if panels and not isinstance(panels[0], Panel) else [list(panels)]
    if not lines or any(not line or not p.values or not p.values[0] for line in lines for p in line):
        raise ValueError("save_heatmaps needs at least one panel, each a non-empty matrix")
    c, width, pad = _Canvas(), 0.0, 24.0
    y = 30.0 if title else 10.0
    if title:
        c.text(10, 20, title, 14, extra="font-weight='bold'")
    for line in lines:
        size = cell or max(8.0, min(44.0, 760.0 / sum(len(p.values[0]) for p in line)))
        x, height = 10.0, 0.0
        for p in line:
            w, h = _draw(c, p, x, y, size)
            x += w + pad
            height = max(height, h)
        width, y = max(width, x - pad + 10), y + height + pad
    svg = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{y:.0f}' "
           f"viewBox='0 0 {width:.0f} {y:.0f}' {FONT}>\n<rect width='100%' height='100%' fill='white'/>\n"
           + "\n".join(c.parts) + "\n</svg>\n")
    return atomic_write_bytes(path, svg.encode("utf-8"))
