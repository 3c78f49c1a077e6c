"""views/figures.py: the guides' pictures are valid SVG that draw every cell of the matrix in the colour of
its value (checked against the terminal heatmap's own viridis scale and a hand-computed diverging one)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from gptkit.cli.views.figures import LEVELS, Panel, diverging, save_heatmaps
from gptkit.cli.views.inspect_view import colour

NS = "{http://www.w3.org/2000/svg}"
CELL = re.compile(r"M(\d+) (\d+)h1v1h-1z")


def cells(root: ET.Element) -> dict[tuple[int, int], str]:
    """(row, column) -> fill of every matrix cell, from the per-colour paths (one panel)."""
    out = {}
    for path in root.iter(f"{NS}path"):
        for j, i in CELL.findall(path.get("d")):
            assert (int(i), int(j)) not in out, "a cell drawn twice"
            out[int(i), int(j)] = path.get("fill")
    return out


def test_every_cell_is_drawn_in_the_colour_of_its_weight(tmp_path):
    w = [[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.5, 0.0, 0.5]]
    path = save_heatmaps(tmp_path / "w.svg", [Panel(w, "weights", ["a", "b", "c"], ["a", "b", "c"], lo=0, hi=1,
                                                    numbers=True, causal=True)])
    root = ET.parse(path).getroot()
    assert root.tag == f"{NS}svg"
    drawn = cells(root)
    assert set(drawn) == {(i, j) for i in range(3) for j in range(3) if j <= i}  # the future is grey, not a value
    for (i, j), fill in drawn.items():
        assert fill == colour(round(w[i][j] * (LEVELS - 1)) / (LEVELS - 1)), (i, j)
    grey = [r for r in root.iter(f"{NS}rect") if r.get("fill") == "rgb(215,215,215)"]
    assert len(grey) == 3  # the three masked cells above the diagonal
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "0.75" in texts and "weights" in texts and texts.count("0.00") == 2  # numbers only below the diagonal


def test_signed_values_use_a_scale_centred_on_zero(tmp_path):
    path = save_heatmaps(tmp_path / "s.svg", [Panel([[-2.0, 0.0, 1.0]], "signed")])
    drawn = cells(ET.parse(path).getroot())
    assert drawn[0, 0] == diverging(0.0) == "rgb(59,76,192)"  # the range is made symmetric: -2 .. 2
    assert drawn[0, 1] == diverging(0.5) == "rgb(240,240,240)"  # zero is white
    assert drawn[0, 2] == diverging(round(0.75 * (LEVELS - 1)) / (LEVELS - 1))


def test_lines_of_panels_and_groups(tmp_path):
    big = [[float(i * j) for j in range(64)] for i in range(3)]
    path = save_heatmaps(tmp_path / "g.svg", [[Panel(big, "q", groups=32)], [Panel([[0.5]]), Panel([[0.1]])]])
    root = ET.parse(path).getroot()
    assert sum(len(CELL.findall(p.get("d"))) for p in root.iter(f"{NS}path")) == 3 * 64 + 2  # every cell, once
    assert [t.text for t in root.iter(f"{NS}text")].count("head 1") == 1
    with pytest.raises(ValueError):
        save_heatmaps(tmp_path / "e.svg", [Panel([], "empty")])
