"""How `gptkit inspect` looks: rich tables and colour heatmaps for a summary and a forward pass.

Owns rendering the plain results of `introspect.py` and `neighbors.py` onto a rich Console (the
terminal, or a recording console whose picture `--save` writes as SVG or HTML) and the scan's
progress bar on stderr. Heatmap cells carry their weight twice — as a colour and as a shade character
(`░▒▓█`) — so they still read with NO_COLOR or in a log file. Tokens show by their `label` (made by
`introspect.tokens.label`, as in `gptkit tokenize`: `<0xEB>` for a byte that is only part of a character), and
labels are cropped and padded by terminal cells, so Hangul (two cells a character) stays aligned.
Column headers are a token's first character, or a byte piece's hex digits (E over B for `<0xEB>`),
since every byte piece's label begins with `<`. It computes nothing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.columns import Columns
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

SHADES = ((0.7, "█"), (0.4, "▓"), (0.2, "▒"), (0.02, "░"))  # weight at least .. -> shade
SPARK = "▁▂▃▄▅▆▇█"
# viridis, low to high: dark violet -> blue -> green -> yellow
STOPS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
BYTE_PIECE = re.compile(r"␣?<0x([0-9A-F]{2})>")  # a label that starts with a byte piece (after a space)


def colour(w: float) -> str:
    """A viridis colour for a weight in [0, 1]."""
    w = min(1.0, max(0.0, w)) * (len(STOPS) - 1)
    i = min(int(w), len(STOPS) - 2)
    f = w - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(STOPS[i], STOPS[i + 1], strict=True))
    return f"rgb({r},{g},{b})"


def shade(w: float) -> str:
    return next((ch for floor, ch in SHADES if w >= floor), " ")


def visible(token: dict[str, Any]) -> str:
    """A token's label with its spaces made visible (control characters are escaped in the label)."""
    return token["label"].replace(" ", "␣") or "∅"


def quoted(token: dict[str, Any]) -> str:
    """A token's label in quotes, for tables: 'e', ' ', '\\n', '<0xEB>'."""
    return f"'{token['label']}'"


def fit(text: str, cells: int, right: bool = False) -> str:
    """`text` cropped or padded to exactly `cells` terminal cells (a wide character cut in half becomes
    a space), padded on the left when `right`."""
    if cell_len(text) > cells:
        text = set_cell_size(text, cells)
    pad = " " * (cells - cell_len(text))
    return pad + text if right else text + pad


def column_key(label: str, cells: int) -> str:
    """A token's column header for a column `cells` wide: a label that starts with a byte piece shows
    its hex digits (`EB` for `<0xEB>` or `␣<0xEB>`; `0xEB` from four cells), any other label its first
    character (all of it from four cells)."""
    m = BYTE_PIECE.match(label)
    if m:
        return ("0x" if cells >= 4 else "") + m.group(1)
    return label if cells >= 4 else label[:1]


def label_width(labels: list[str]) -> int:
    # up to 12 cells: two byte pieces (<0xEC><0x9D>) or six Hangul syllables before a label is cropped
    return min(12, max(cell_len(lb) for lb in labels)) + 5  # "idx token " before the cells


def row_label(i: int, label: str, width: int) -> str:
    return f"{i:>3} {fit(label, width - 5)} "


def heatmap(weights: list[list[float]], labels: list[str], title: str) -> Text:
    """Query rows x key columns; cells above the diagonal (the future, masked) show as a dim dot."""
    T = len(labels)
    keys = [column_key(lb, 2) for lb in labels]
    # one cell a column past 40 tokens, unless a header is a wide character (Hangul): it would show blank
    cw = 2 if T <= 40 or any(cell_len(k[:1]) > 1 for k in keys) else 1
    lw = label_width(labels)
    out = Text()
    out.append(title + "\n", style="bold")
    for r in range(max(len(k) for k in keys)):  # a byte's digits stacked, E over B: side by side they run together
        out.append(" " * lw + "".join(fit(k[r:r + 1], cw) for k in keys) + "\n", style="dim")
    if any(len(lb) > 1 for lb in labels):  # multi-character tokens: number the columns too
        out.append(" " * lw + "".join(str(j % 10).ljust(cw) for j in range(T)) + "\n", style="dim")
    for i, row in enumerate(weights):
        out.append(row_label(i, labels[i], lw), style="dim")
        for j, w in enumerate(row):
            if j > i:
                out.append("·".ljust(cw), style="grey50")
            else:
                out.append(shade(w) * cw, style=colour(w))
        out.append("\n")
    return out


def number_matrix(weights: list[list[float]], labels: list[str], title: str) -> Text:
    """The weight matrix itself, two decimals; the masked future (exact zeros) dimmed."""
    lw = label_width(labels)
    out = Text()
    out.append(title + "\n", style="bold")
    out.append(" " * lw + "".join(" " + fit(column_key(lb, 4), 4, right=True) for lb in labels) + "\n", style="dim")
    for i, row in enumerate(weights):
        out.append(row_label(i, labels[i], lw), style="dim")
        for j, w in enumerate(row):
            out.append(f"{w:5.2f}", style="grey50" if j > i else colour(w))
        out.append("\n")
    return out


def render_summary(console: Console, s: dict[str, Any]) -> None:
    console.print(Text(f"{s['run']}  ({s['path']})", style="bold"))
    mc = s["model_config"]
    model = Table.grid(padding=(0, 2))
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "pos_encoding", "norm", "mlp",
                "bias", "dropout"):
        model.add_row(key, str(mc.get(key)))
    params = Table(title="parameters", title_justify="left", show_edge=False)
    params.add_column("part")
    params.add_column("count", justify="right")
    params.add_column("share", justify="right")
    total = max(1, s["params"]["total"])
    for part, n in s["params"]["parts"].items():
        params.add_row(part, f"{n:,}", f"{100 * n / total:.1f}%")
    params.add_row(Text("total", style="bold"), f"{s['params']['total']:,}", "")
    params.add_row("non-embedding", f"{s['params']['non_embedding']:,}", "")
    console.print(Columns([Group(Text("model", style="italic"), model), params], padding=(0, 4)))
    tok = s["tokenizer"]
    console.print(f"tokenizer: {tok['kind']} ({tok['name']}), {tok['vocab_size']:,} ids", markup=False)
    render_training(console, s)
    dtypes = ", ".join(f"{k} x{v}" for k, v in s["dtypes"].items())
    console.print(f"file: {s['file_bytes'] / 1e6:.2f} MB, tensors {dtypes}, format version {s['format_version']}, "
                  f"optimizer state {'yes' if s['has_optimizer_state'] else 'no'}", markup=False)


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def render_training(console: Console, s: dict[str, Any]) -> None:
    t = s["training"]
    data = t.get("data") or {}
    console.print(f"training: {_num(t.get('step'), ',')} steps, {_num(t.get('tokens_seen'), ',')} tokens seen, "
                  f"best val loss {_num(t.get('best_val_loss'), '.4f')}, val loss {_num(t.get('val_loss'), '.4f')} "
                  f"({_num(t.get('val_bpc'), '.3f')} bits/char), data {data.get('origin', '-')}", markup=False)
    curve = [p for p in s["loss_curve"] if isinstance(p.get("val_loss"), (int, float))]
    if curve:
        vals = [p["val_loss"] for p in curve]
        lo, hi = min(vals), max(vals)
        spark = "".join(SPARK[int((v - lo) / (hi - lo + 1e-12) * (len(SPARK) - 1))] for v in vals)
        console.print(Text.assemble("val loss curve: ", (f"{vals[0]:.3f} ", "dim"), (spark, "cyan"),
                                    (f" {vals[-1]:.3f}", "dim"),
                                    f"  ({len(vals)} evals, steps {curve[0]['step']}–{curve[-1]['step']})"))


def render_header(console: Console, s: dict[str, Any]) -> None:
    """One line about the checkpoint, above the forward-pass views."""
    mc, t = s["model_config"], s["training"]
    console.print(Text(f"{s['run']}: {mc['n_layer']} layers x {mc['n_head']} heads, {mc['n_embd']} wide, "
                       f"{s['params']['total']:,} parameters, {s['tokenizer']['kind']} tokenizer; "
                       f"step {_num(t.get('step'), ',')}, val loss {_num(t.get('val_loss'), '.4f')}", style="bold"))


def heading(console: Console, title: str, note: str = "") -> None:
    console.print(Text.assemble((title, "bold"), ("  " + note if note else "", "dim")))


def token_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(show_edge=False)
    table.add_column("token")
    table.add_column("id", justify="right")
    table.add_column("prob", justify="right")
    table.add_column("")
    for r in rows:
        table.add_row(Text(quoted(r)), str(r["id"]), f"{r['prob']:.3f}", Text("█" * round(20 * r["prob"]), "green"))
    return table


def render_attention(console: Console, res: dict[str, Any], layer: int | None, head: int | None,
                     numbers: bool) -> None:
    labels = [visible(t) for t in res["tokens"]]
    heading(console, "attention weights", "query rows x key columns; each row sums to 1; · = the future, masked;"
            "  ░ ≥.02  ▒ ≥.2  ▓ ≥.4  █ ≥.7")
    for li, heads in enumerate(res["attention"]):
        if layer is not None and li != layer:
            continue
        picked = [(hi, w) for hi, w in enumerate(heads) if head is None or hi == head]
        maps = [heatmap(w, labels, f"layer {li} head {hi}") for hi, w in picked]
        if 2 * (label_width(labels) + len(labels) * 2) + 3 <= console.width:
            console.print(Columns(maps, padding=(0, 3)))
        else:  # one per line, never cropped: a wide map is still right in a file or a wide terminal
            for m in maps:
                console.print(m, soft_wrap=True)
        for hi, w in picked if numbers else []:
            console.print(number_matrix(w, labels, f"layer {li} head {hi} weights"), soft_wrap=True)


def render_lens(console: Console, res: dict[str, Any], k: int = 5) -> None:
    target = res["attribution"]["token"]
    heading(console, "logit lens", "the last position's residual stream after each stage, read through ln_f + lm_head")
    table = Table(show_edge=False)
    table.add_column("after")
    table.add_column(f"top {k}")
    table.add_column(Text(f"p({quoted(target)})"), justify="right")
    for row in res["logit_lens"]:
        top = Text()
        for t in row["top"][:k]:
            top.append(quoted(t), style="bold" if t["id"] == target["id"] else "")
            top.append(f" {t['prob']:.2f}  ", style="dim")
        table.add_row(row["stage"], top, f"{row['target_prob']:.3f}")
    console.print(table)


def render_attribution(console: Console, res: dict[str, Any]) -> None:
    a = res["attribution"]
    heading(console, "direct logit attribution", f"how much each part of the residual stream pushes the logit of "
            f"{quoted(a['token'])} (ln_f linearised at its scale {a['ln_f_scale']:.3f})")
    table = Table(show_edge=False)
    table.add_column("part")
    table.add_column("logit", justify="right")
    table.add_column("")
    biggest = max(1e-9, max(abs(t["value"]) for t in a["terms"]))
    for t in a["terms"]:
        bar = "█" * round(16 * abs(t["value"]) / biggest)
        table.add_row(t["name"], f"{t['value']:+.3f}", Text(bar, "green" if t["value"] >= 0 else "red"))
    table.add_row(Text("sum", style="bold"), f"{a['sum']:+.3f}", Text(f"= the model's logit {a['logit']:+.3f}", "dim"))
    console.print(table)


def render_neighbors(console: Console, nb: dict[str, Any], shown: int = 5) -> None:
    heading(console, "FFN-output neighbours", f"{nb['positions_scanned']:,} positions of {nb['source']['path']} "
            f"({nb['source']['scope']}), each run in a window of {nb['window']} tokens, as long as the prompt")
    for b in nb["blocks"]:
        table = Table(title=f"block {b['layer']}", title_justify="left", show_edge=False)
        table.add_column("position", justify="right")
        table.add_column("cosine", justify="right")
        table.add_column("context")
        table.add_column("then")
        for n in b["neighbors"][:shown]:
            table.add_row(f"{n['position']:,}", f"{n['score']:.4f}", Text(f"'{n['context_label'][-40:]}'"),
                          Text(quoted(n["next"])))
        console.print(table)
    heading(console, "what followed them", f"the next tokens of all {nb['k']} x {len(nb['blocks'])} neighbours, "
            "against the model's probabilities")
    table = Table(show_edge=False)
    for col in ("token", "count", "share", "model prob"):
        table.add_column(col, justify="left" if col == "token" else "right")
    for a in nb["approx"][:10]:
        table.add_row(Text(quoted(a)), str(a["count"]), f"{a['prob']:.3f}", f"{a['model_prob']:.3f}")
    console.print(table)
    top = nb["model_top"]
    agree = "agrees" if nb["top1_agree"] else "disagrees"
    console.print(f"top-1 {agree} (neighbours {quoted(nb['approx'][0])}, model {quoted(top)}); "
                  f"KL(neighbours ‖ model) = {nb['kl_approx_model']:.3f} nats", markup=False)


class StdoutConsole(Console):
    """rich's Console for stdout, except that a closed pipe (`gptkit inspect | head`) raises
    BrokenPipeError, which the CLI ends quietly with 0 like other Unix tools; rich's own handler
    exits with 1."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def render_eval(console: Console, ev: dict[str, Any]) -> None:
    """`--neighbors --eval N`: one row per predictor, the model's own accuracy beside them."""
    lo, hi = ev["context"]
    heading(console, "FFN-neighbour method, measured",
            f"{ev['positions']:,} positions drawn (seed {ev['seed']}) from {ev['held_out_tokens']:,} held-out tokens, "
            f"each with {lo}-{hi} tokens of context; neighbours: {ev['k']} per block among "
            f"{ev['pool_positions']:,} positions of {ev['source']['path']} ({ev['source']['scope']})")
    table = Table(show_edge=False)
    for col in ("predictor", "top-1 = model", "KL", "Hellinger", "top-1 = next"):
        table.add_column(col, justify="left" if col == "predictor" else "right")
    for row in ev["rows"]:
        if row["kind"] == "baseline" and row is ev["rows"][-2]:
            table.add_section()
        table.add_row(Text(row["name"], {"combined": "bold", "baseline": "dim"}.get(row["kind"], "")),
                      f"{row['top1_agree']:.1%}", f"{row['kl']:.3f}", f"{row['hellinger']:.3f}",
                      f"{row['top1_actual']:.1%}")
    table.add_section()
    table.add_row("the model", "", "", "", f"{ev['model']['top1_actual']:.1%}")
    console.print(table)
    cache = ev["cache"]
    console.print(Text("Means over the positions. top-1 = model: how often a predictor's most likely token is the "
                       "model's; KL(predictor ‖ model) in nats; Hellinger distance 0 (same) to 1 (disjoint); "
                       "top-1 = next: how often it is the token that came next. The baselines: the training "
                       "text's unigram distribution, and what followed the longest suffix of the context found "
                       "in it (an n-gram model's longest match); they know no FFN at all.", "dim"))
    console.print(Text(f"The longest matching suffix was "
                       f"{ev['suffix_mean_length']:.1f} tokens on average. FFN outputs "
                       f"{'computed' if cache['built'] else 'read from'} {cache['path']} in {cache['seconds']:.1f} s; "
                       f"search {ev['seconds']['search']:.1f} s.", "dim"))


def render(console: Console, summary: dict[str, Any], res: dict[str, Any] | None = None,
           nb: dict[str, Any] | None = None, layer: int | None = None, head: int | None = None,
           numbers: bool = False, k: int = 10, ev: dict[str, Any] | None = None) -> None:
    """The whole `inspect` view: the summary alone, or a header and every forward-pass view, and
    the --eval table."""
    if res is None:
        if ev is None:
            render_summary(console, summary)
            return
        render_header(console, summary)
        render_eval(console, ev)
        return
    render_header(console, summary)
    console.print(Text("prompt tokens: ") + Text(" ".join(visible(t) for t in res["tokens"]), "cyan")
                  + Text(f"  ({len(res['tokens'])} tokens)", "dim"))
    heading(console, "next token", f"the {k} most likely after the prompt")
    console.print(token_table(res["next_token"][:k]))
    render_attention(console, res, layer, head, numbers)
    render_lens(console, res)
    render_attribution(console, res)
    if nb is not None:
        render_neighbors(console, nb)
    if ev is not None:
        render_eval(console, ev)


@contextmanager
def scan_progress(stream=None) -> Iterator[Callable[[int, int], None]]:
    """A progress callback for the neighbour scan: a rich bar on a terminal, a line per quarter otherwise."""
    stream = stream or sys.stderr
    console = Console(file=stream)
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("scanning positions"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("scan", total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    marks: set[int] = set()

    def line(done: int, total: int) -> None:
        quarter = 4 * done // max(1, total)
        if quarter not in marks:
            marks.add(quarter)
            print(f"scanning positions: {done:,}/{total:,}", file=stream, flush=True)

    yield line


@contextmanager
def phase_progress(stream=None) -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback (what, done, total) for --eval's phases: a rich bar per phase on a terminal,
    a line per quarter of each phase otherwise."""
    stream = stream or sys.stderr
    console = Console(file=stream)
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            tasks: dict[str, Any] = {}

            def update(what: str, done: int, total: int) -> None:
                if what not in tasks:
                    tasks[what] = bar.add_task(what, total=total)
                bar.update(tasks[what], completed=done, total=total)

            yield update
        return
    marks: set[tuple[str, int]] = set()

    def line(what: str, done: int, total: int) -> None:
        quarter = 4 * done // max(1, total)
        if (what, quarter) not in marks:
            marks.add((what, quarter))
            print(f"{what}: {done:,}/{total:,}", file=stream, flush=True)

    yield line
