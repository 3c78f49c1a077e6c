"""`gptkit runs` on a store of real runs (tiny models trained for a few steps here), one of them with a
truncated checkpoint: every figure checked against what training itself reported (its events) or
the loaded model, newest first, the damaged run listed as unreadable, headers read without torch,
and the curves drawn in the terminal and as an SVG that holds the same points."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import SHAKESPEARE, assert_one_line_error, run_cli, run_here

RUNS = {  # name: (tokenizer, steps); trained oldest first
    "chars": ("char", 12),
    "bytes": ("byte", 8),
    "longer": ("char", 16),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from gptkit.config import resolve_config
    from gptkit.train import train

    root = tmp_path_factory.mktemp("runs")
    (root / "text.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    store = root / "store"
    events: dict[str, list[dict]] = {}
    for i, (name, (tok, steps)) in enumerate(RUNS.items()):
        mc, tc = resolve_config("tiny", None, dict(tokenizer=tok, n_layer=1, n_head=2, n_embd=32, block_size=32,
                                                   batch_size=4, tokens_per_step=4 * 32, max_iters=steps, eval_interval=4,
                                                   eval_iters=2))
        events[name] = []
        train(mc, tc, str(root / "text.txt"), store / name, store, on_event=events[name].append)
        for f in (store / name).glob("*.safetensors"):  # a clear order, whatever the file system's clock
            os.utime(f, (1_700_000_000 + 1000 * i, 1_700_000_000 + 1000 * i))
    broken = store / "broken"  # a copy of `chars` whose last checkpoint was cut short
    broken.mkdir()
    data = (store / "chars" / "last.safetensors").read_bytes()
    (broken / "last.safetensors").write_bytes(data[: len(data) // 2])
    (broken / "metrics.jsonl").write_bytes((store / "chars" / "metrics.jsonl").read_bytes())
    os.utime(broken / "last.safetensors", (1_700_000_000 + 500, 1_700_000_000 + 500))
    return {"store": store, "events": events}


def listed(capsys, store, *args):
    proc = run_here(capsys, "runs", "--store", str(store), "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_every_run_with_the_figures_training_reported(store, capsys):
    from gptkit.checkpoint import load_for_inference

    runs = listed(capsys, store["store"])
    assert [r["name"] for r in runs] == ["longer", "bytes", "broken", "chars"]  # newest first
    for r in runs:
        if r["name"] == "broken":
            continue
        tok, steps = RUNS[r["name"]]
        evals = [e for e in store["events"][r["name"]] if e["event"] == "eval"]
        best = min(evals, key=lambda e: e["val_loss"])
        done = next(e for e in store["events"][r["name"]] if e["event"] == "done")
        model, tokenizer, _ = load_for_inference(store["store"] / r["name"])
        start = next(e for e in store["events"][r["name"]] if e["event"] == "start")
        assert start["tokens_per_step"] == 4 * 32  # one micro-batch of 4 sequences of 32 a step
        assert r["step"] == steps and r["tokens_seen"] == steps * start["tokens_per_step"]
        # as training reported it: the tied head once, the vocabulary's padding rows not at all
        assert r["params"] == start["params"] == model.num_params()
        assert r["tokenizer"] == tok and r["vocab_size"] == tokenizer.vocab_size
        assert r["best_val_loss"] == pytest.approx(best["val_loss"]) and r["best_val_loss"] == done["best_val_loss"]
        assert r["best_val_bpc"] == pytest.approx(best["val_bpc"], rel=1e-9)
        if tok == "char":  # one token a character: bits/char is nats/token in base 2
            assert r["best_val_bpc"] == pytest.approx(best["val_loss"] / math.log(2))
        assert 0 < r["elapsed"] <= done["elapsed"] + 1e-6


def test_a_truncated_checkpoint_is_listed_as_unreadable(store, capsys):
    runs = {r["name"]: r for r in listed(capsys, store["store"])}
    assert set(runs["broken"]) == {"name", "path", "updated", "error"}
    assert "truncated" in runs["broken"]["error"]
    table = run_here(capsys, "runs", "--store", str(store["store"]))
    assert table.returncode == 0 and table.stderr == ""
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["run", "updated", "steps", "tokens", "params", "tokenizer", "best", "val", "bits/char",
                                "time"]
    assert [ln.split()[0] for ln in lines[1:]] == ["longer", "bytes", "broken", "chars"]
    broken = next(ln for ln in lines if ln.startswith("broken"))
    assert "unreadable:" in broken and "truncated" in broken
    longer = runs["longer"]
    assert f"{longer['best_val_loss']:.4f}" in lines[1] and f"{longer['best_val_bpc']:.3f}" in lines[1]


def test_runs_reads_headers_only_without_torch(store):
    code = ("import sys\nfrom gptkit.cli import main\n"
            f"try:\n    main(['runs', '--store', {str(store['store'])!r}, '--plot'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "val bits/char" in proc.stdout


def test_plot_in_the_terminal_and_as_svg(store, tmp_path):
    picture = tmp_path / "loss.svg"
    proc = run_cli("runs", "--store", str(store["store"]), "--plot", "chars", "bytes", "--save", str(picture))
    assert proc.returncode == 0, proc.stderr
    legend = proc.stdout.splitlines()[-1].split()
    assert legend == ["×", "chars", "•", "bytes"] or legend == ["•", "bytes", "×", "chars"]
    assert "longer" not in proc.stdout
    rows = [ln for ln in proc.stdout.splitlines() if "│" in ln]
    assert len(rows) == 14 and all(ln.split("│")[1].strip() for ln in rows[:1])  # the highest curve starts at the top
    svg = ET.parse(picture).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    lines = svg.findall("s:polyline", ns)
    names = [t.text for t in svg.findall("s:text", ns)][-2:]
    assert sorted(names) == ["bytes", "chars"] and len(lines) == 2
    for line, name in zip(lines, names, strict=True):
        evals = [e["val_bpc"] for e in store["events"][name] if e["event"] == "eval"]
        ys = [float(p.split(",")[1]) for p in line.get("points").split()]
        assert len(ys) == len(evals)
        # SVG y grows downwards: the higher the loss, the smaller y, so the orders are reversed
        assert sorted(range(len(ys)), key=ys.__getitem__) == sorted(range(len(evals)), key=lambda i: -evals[i])


def test_runs_errors_are_one_line(store, tmp_path, capsys):
    assert_one_line_error(run_here(capsys, "runs", "--store", str(store["store"]), "--plot", "ghost"), "ghost",
                          "longer")
    assert_one_line_error(run_here(capsys, "runs", "--store", str(store["store"]), "--save", "x.png"), ".svg")
    assert_one_line_error(run_here(capsys, "runs", "--store", str(store["store"]), "--save",
                                   str(tmp_path / "no" / "x.svg")), "cannot write")
    empty = run_here(capsys, "runs", "--store", str(tmp_path / "nothing"))
    assert empty.returncode == 0 and empty.stdout == "" and "no runs" in empty.stderr


def test_bits_per_char_is_the_best_loss_not_the_last(store, tmp_path, capsys):
    """When the last evaluation is worse than the best, the listed bits/char must be the best's: the
    header keeps the last loss's bits/char, so the best's comes from the run's tokens per character."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = store["store"] / "bytes" / "last.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state = json.loads(meta["state"])
    per_char = state["val_bpc"] * math.log(2) / state["val_loss"]  # this byte-level run's tokens per character
    state.update(best_val_loss=2.5, val_loss=3.0, val_bpc=3.0 / math.log(2) * per_char)
    (tmp_path / "s" / "worse").mkdir(parents=True)
    save_file(tensors, str(tmp_path / "s" / "worse" / "last.safetensors"), metadata={**meta, "state": json.dumps(state)})
    [run] = listed(capsys, tmp_path / "s")
    assert run["best_val_loss"] == 2.5
    assert run["best_val_bpc"] == pytest.approx(2.5 / math.log(2) * per_char)
