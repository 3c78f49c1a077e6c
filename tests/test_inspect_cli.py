"""`gptkit inspect` as a user runs it: the summary, --json, --save, --neighbors, Korean views and
one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from rich.cells import cell_len

from tests.conftest import SHAKESPEARE, assert_one_line_error, cli_env, gptkit_argv, run_cli, run_here

PROMPT = "KING RICHARD III:\nWhat says the"


def run_inspect(trained_run, *args: str, cwd=None):
    return run_cli("inspect", *args, "--checkpoints", str(trained_run["store"]), cwd=cwd)


def test_inspect_help_does_not_import_torch():
    code = ("import sys; from gptkit.cli import main\n"
            "try:\n    main(['inspect', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'rich.console' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--neighbors" in proc.stdout and "--max-positions" in proc.stdout


def _greedy_ids(capsys, *args: str) -> list[int]:
    proc = run_here(capsys, "sample", *args, "-p", "ROMEO:", "-n", "12", "--temperature", "0", "--no-echo", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["token_ids"]


def test_with_no_run_named_the_newest_of_several_runs_in_the_gptkit_store_store(trained_run, tmp_path, capsys,
                                                                                monkeypatch):
    """GPTKIT_STORE and no --store: `train` writes there (not ./checkpoints), and `inspect` and `sample`
    with no run named take its newest run by checkpoint time, out of two, whichever is newer."""
    import os
    import shutil
    import time

    from gptkit import checkpoint
    from gptkit.generate import generate

    store = tmp_path / "elsewhere"
    old = store / "shakespeare"
    old.mkdir(parents=True)
    for name in (checkpoint.BEST, "metrics.jsonl"):
        shutil.copy(trained_run["run_dir"] / name, old / name)
    os.utime(old / checkpoint.BEST, (1_000_000_000, 1_000_000_000))  # an old run
    monkeypatch.chdir(tmp_path)  # the default store would be ./checkpoints: nothing may land there
    monkeypatch.delenv("GPTKIT_CHECKPOINTS", raising=False)
    monkeypatch.setenv("GPTKIT_STORE", str(store))
    monkeypatch.setenv("COLUMNS", "300")  # the header line, path and all, on one line
    text = tmp_path / "tiny.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    proc = run_here(capsys, "train", str(text), "--run", "new", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                    "--block-size", "16", "--batch-size", "2", "--grad-accum", "1", "--max-iters", "3",
                    "--eval-interval", "3", "--eval-iters", "1", "--device", "cpu", "--no-compile", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (store / "new" / checkpoint.LAST).is_file() and not (tmp_path / "checkpoints").exists()
    expect_new, expect_old = ([*generate(m, tok.encode("ROMEO:"), 12, temperature=0)] for m, tok, _ in
                              (checkpoint.load_for_inference(store / "new"), checkpoint.load_for_inference(old)))
    assert expect_new != expect_old  # the two runs tell apart by their greedy text

    proc = run_here(capsys, "inspect")  # no PATH|RUN: the newest run, the one just trained
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"new  ({store / 'new' / checkpoint.BEST})", proc.stdout
    assert "training: 3 steps" in proc.stdout, proc.stdout
    assert _greedy_ids(capsys) == expect_new

    later = time.time() + 1000  # the old run improved again (its best written last): now it is the newest
    os.utime(old / checkpoint.BEST, (later, later))
    proc = run_here(capsys, "inspect")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.splitlines()[0] == f"shakespeare  ({old / checkpoint.BEST})", out
    total = next(e for e in trained_run["events"] if e["event"] == "start")["params"]
    assert f"{total:,}" in out and "non-embedding" in out and "attention Q" in out
    assert "tokenizer: char (char), 65 ids" in out
    assert f"{trained_run['result'].step:,} steps" in out and "bits/char" in out
    assert "val loss curve:" in out and "format version 1" in out
    assert _greedy_ids(capsys) == expect_old


def test_a_closed_pipe_ends_quietly_with_0(trained_run, tmp_path):
    """`gptkit inspect | head`: rich's console exits 1 when its pipe closes; inspect ends with 0, like
    tokenize, sample and other Unix tools. The reading end is closed before inspect writes anything."""
    proc = subprocess.Popen([*gptkit_argv(), "inspect", str(trained_run["run_dir"])], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 0 and err == b"", err


def test_json_holds_every_number(trained_run, tmp_path):
    page = tmp_path / "view.html"
    proc = run_inspect(trained_run, "shakespeare", "--prompt", PROMPT, "--json", "--rows", "4", "--save", str(page))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert set(doc) == {"summary", "analysis", "neighbors", "eval"} and doc["neighbors"] is None is doc["eval"]
    s, a = doc["summary"], doc["analysis"]
    cfg = s["model_config"]
    assert s["params"]["total"] == next(e for e in trained_run["events"] if e["event"] == "start")["params"]
    assert "".join(t["text"] for t in a["tokens"]) == PROMPT
    T = len(a["tokens"])
    att = a["attention"]
    assert (len(att), len(att[0]), len(att[0][0]), len(att[0][0][0])) == (cfg["n_layer"], cfg["n_head"], T, T)
    for row_set in (w for layer in att for w in layer):
        for i, row in enumerate(row_set):
            assert sum(row) == pytest.approx(1.0, abs=1e-5) and all(v == 0 for v in row[i + 1:])
    assert len(a["next_token"]) == 4
    assert [t["id"] for t in a["logit_lens"][-1]["top"]] == [t["id"] for t in a["next_token"]]
    assert sum(t["value"] for t in a["attribution"]["terms"]) == pytest.approx(a["attribution"]["logit"], abs=1e-4)
    assert page.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


def test_view_and_svg_of_one_head(trained_run, tmp_path):
    svg = tmp_path / "head.svg"
    proc = run_inspect(trained_run, str(trained_run["run_dir"]), "-p", PROMPT, "--layer", "1", "--head", "2",
                   "--numbers", "--save", str(svg))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "layer 1 head 2" in out and "layer 0 head" not in out and "layer 1 head 0" not in out
    assert "layer 1 head 2 weights" in out and " 1.00" in out  # the first query sees only itself
    for section in ("next token", "logit lens", "direct logit attribution", "= the model's logit"):
        assert section in out
    text = svg.read_text(encoding="utf-8")
    assert text.startswith("<svg") and len(text) > 10_000 and "logit&#160;lens" in text


def test_neighbors_flag_finds_a_copied_prompt_in_a_file_whose_hash_differs(trained_run, tmp_path):
    text = SHAKESPEARE.read_text(encoding="utf-8")[:20_000].replace("Citizen", "Burgher")
    data = tmp_path / "edited.txt"
    data.write_text(text, encoding="utf-8")
    end = 190
    prompt = text[end - 11:end + 1]  # 't Burgher:\nF', copied from the edited file, found once in it
    assert text.count(prompt) == 1
    proc = run_inspect(trained_run, "-p", prompt, "--neighbors", "--data", str(data), "--max-positions", "300",
                       "--n-neighbors", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "differs from the text this checkpoint was trained on" in warnings[0]
    assert "Traceback" not in proc.stderr
    nb = json.loads(proc.stdout)["neighbors"]
    assert nb["source"] == {"path": str(data), "scope": "whole file"}
    assert nb["positions_scanned"] == 300 and nb["window"] == len(prompt)
    for block in nb["blocks"]:
        assert block["neighbors"][0]["position"] == end
        assert block["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        for n in block["neighbors"]:
            assert text[n["position"] - 11:n["position"] + 1] == n["context"]
            assert text[n["position"] + 1] == n["next"]["text"]


KOREAN_PROMPT = "고양이가 뷁 하고 울었다"  # whole syllables, and 뷁 in byte pieces


def test_korean_labels_line_up_by_terminal_cells(korean_bpe_run, capsys):
    proc = run_here(capsys, "inspect", str(korean_bpe_run), "-p", KOREAN_PROMPT, "--layer", "0", "--head", "0",
                    "--numbers")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    n = len(prompt_pieces(korean_bpe_run))
    for title in ("layer 0 head 0", "layer 0 head 0 weights"):
        start = lines.index(title) + 1
        block = lines[start:lines.index("", start)]  # column headers, then one row per token
        rows = block[-n:]
        assert any("고" in r for r in rows) and any("<0x" in r for r in rows)
        # every line of a map, Hangul labels or not, is as many terminal cells wide as the others
        assert len({cell_len(line) for line in block}) == 1, "\n".join(block)


def reference_label(piece: bytes) -> str:
    """A token's label as the docs define it, written here without gptkit's code: each whole UTF-8
    character as itself, each byte that is only part of one as <0xXX>."""
    out, i = [], 0
    while i < len(piece):
        lead = piece[i]
        n = 1 if lead < 0x80 else 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if lead >= 0xF0 else 0
        whole = n and i + n <= len(piece) and all(0x80 <= c < 0xC0 for c in piece[i + 1:i + n])
        out.append(piece[i:i + n].decode("utf-8") if whole else f"<0x{lead:02X}>")
        i += n if whole else 1
    return "".join(out)


def prompt_pieces(run) -> list[tuple[int, str | None, str]]:
    """(id, text, label) of each token of KOREAN_PROMPT, from the run's own tokenizer: whatever merges
    rustbpe learned, these are the pieces the views must show."""
    from gptkit import checkpoint
    from gptkit.tokenizers.stored import tokenizer_from_dict

    tok = tokenizer_from_dict(checkpoint.read_info(checkpoint.resolve(run)).meta["tokenizer"])
    ids = tok.encode(KOREAN_PROMPT)
    pieces = [tok.token_bytes(i) for i in ids]
    assert b"".join(pieces) == KOREAN_PROMPT.encode("utf-8")
    out = []
    for i, piece in zip(ids, pieces, strict=True):
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        out.append((i, text, reference_label(piece)))
    assert any(t is None for _, t, _ in out) and any(t for _, t, _ in out)  # byte pieces and whole syllables
    return out


def _cells(line: str) -> list[str]:
    """A line as terminal cells: a wide character fills its cell and an empty one after it."""
    out: list[str] = []
    for ch in line:
        out += [ch] + [""] * (cell_len(ch) - 1)
    return out


def test_byte_piece_columns_are_headed_by_their_hex_digits(korean_bpe_run, capsys):
    """Every byte piece's label starts with `<`, so a header of first characters read `< < <`; columns
    show the hex digits instead (E over B in a heatmap, 0xEB over the numbers)."""
    proc = run_here(capsys, "inspect", str(korean_bpe_run), "-p", KOREAN_PROMPT, "--layer", "0", "--head", "0",
                    "--numbers")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    labels = [label.replace(" ", "␣") for _, _, label in prompt_pieces(korean_bpe_run)]
    top, bottom, numbering = lines[lines.index("layer 0 head 0") + 1:][:3]  # two header rows, column numbers
    width = len(numbering) - len(numbering.lstrip())  # the row labels' width: column j starts at width + 2j
    assert numbering.split()[:len(labels)] == [str(j % 10) for j in range(len(labels))], numbering
    numbers = _cells(lines[lines.index("layer 0 head 0 weights") + 1])  # each column 5 cells: " 0xEB"
    top, bottom = _cells(top), _cells(bottom)
    for j, label in enumerate(labels):
        byte = re.match(r"␣?<0x([0-9A-F]{2})>", label)
        if byte:
            assert top[width + 2 * j] + bottom[width + 2 * j] == byte.group(1), (j, label)
            assert "".join(numbers[width + 5 * j:width + 5 * j + 5]) == " 0x" + byte.group(1), (j, label)
        else:
            assert top[width + 2 * j] == label[0], (j, label)
    assert "<" not in "".join(top + bottom)


def test_one_cell_columns_stack_a_bytes_hex_digits():
    from gptkit.cli.views.inspect_view import heatmap

    labels = ["a", "<0xEB>", "␣<0x9C>", "the"] + ["x"] * 40  # over 40 tokens: one cell a column
    text = heatmap([[1.0] * len(labels)] * len(labels), labels, "map").plain.splitlines()
    assert text[1].split() == ["aE9t" + "x" * 40] and text[2].split() == ["BC"], text[1:3]
    assert text[1].index("E") + 1 == text[1].index("9") == text[2].index("C")  # E over B, 9 over C


def test_hangul_keeps_two_cell_columns_and_labels_show_two_byte_pieces():
    """Past 40 tokens columns shrink to one cell, where a Hangul header would show blank: a map with
    one keeps two cells a column. Row labels show up to 12 cells: <0xEC><0x9D> whole."""
    from gptkit.cli.views.inspect_view import heatmap

    labels = ["a", "고", "<0xEC><0x9D>", "양이"] + ["x"] * 40
    text = heatmap([[1.0] * len(labels)] * len(labels), labels, "map").plain.splitlines()
    assert text[1].lstrip().startswith("a 고E 양x x "), text[1]  # two cells a column: 고 fills its own
    rows = text[-len(labels):]
    assert rows[2].split()[:2] == ["2", "<0xEC><0x9D>"] and rows[3].split()[:2] == ["3", "양이"], rows[2:4]
    assert len({cell_len(r) for r in rows}) == 1  # every row as many cells wide


def test_byte_pieces_show_as_tokenize_shows_them(korean_bpe_run, capsys, monkeypatch):
    """inspect and tokenize give the tokenizer's own pieces, with the same ids, texts and labels, and
    inspect's prompt line shows those labels: no U+FFFD for a byte that is part of a syllable."""
    expected = prompt_pieces(korean_bpe_run)
    js = run_here(capsys, "inspect", str(korean_bpe_run), "-p", KOREAN_PROMPT, "--json")
    tok = run_here(capsys, "tokenize", "--checkpoint", str(korean_bpe_run), KOREAN_PROMPT, "--json")
    assert js.returncode == 0 and tok.returncode == 0, js.stderr + tok.stderr
    mine = json.loads(js.stdout)["analysis"]["tokens"]
    theirs = json.loads(tok.stdout)["tokens"]
    assert [(t["id"], t["text"], t["label"]) for t in mine] == expected
    assert [(t["id"], t["text"], t["label"]) for t in theirs] == expected
    assert "\ufffd" not in js.stdout
    monkeypatch.setenv("COLUMNS", "200")
    view = run_here(capsys, "inspect", str(korean_bpe_run), "-p", KOREAN_PROMPT, "--neighbors", "--max-positions",
                    "300")
    assert view.returncode == 0, view.stderr
    assert "\ufffd" not in view.stdout
    shown = " ".join(label.replace(" ", "␣") for _, _, label in expected)
    assert f"prompt tokens: {shown}  ({len(expected)} tokens)" in view.stdout, view.stdout


def test_an_unwritable_save_path_fails_before_any_output(trained_run, capsys, tmp_path):
    (tmp_path / "adir.svg").mkdir()
    (tmp_path / "afile").write_text("a file where a folder should be\n", encoding="utf-8")
    for path in (tmp_path / "missing" / "view.svg", tmp_path / "adir.svg", tmp_path / "afile" / "view.html"):
        proc = run_here(capsys, "inspect", "--checkpoints", str(trained_run["store"]), "-p", PROMPT, "--save",
                        str(path))
        assert_one_line_error(proc, "cannot write", str(path), "--save")
        assert proc.returncode == 2 and proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.svg", "afile"]


def test_checkpoint_named_as_sample_names_it(trained_run, capsys):
    """`-c RUN` works as in `gptkit sample`, and gives the view the argument gives."""
    store = str(trained_run["store"])
    by_argument = run_here(capsys, "inspect", "shakespeare", "--checkpoints", store, "-p", "the", "--json")
    by_option = run_here(capsys, "inspect", "-c", "shakespeare", "--checkpoints", store, "-p", "the", "--json")
    assert by_argument.returncode == by_option.returncode == 0, by_option.stderr
    assert json.loads(by_option.stdout) == json.loads(by_argument.stdout)
    assert run_here(capsys, "inspect", "shakespeare", "-c", "shakespeare", "--checkpoints", store).returncode == 0


@pytest.fixture(scope="module")
def store_without_data_record(trained_run, tmp_path_factory):
    """A copy of the trained checkpoint whose metadata records no training text."""
    from gptkit import checkpoint

    model, _, info = checkpoint.load_for_inference(trained_run["run_dir"])
    meta = {k: info.meta[k] for k in ("model_config", "train_config", "tokenizer")}
    meta["state"] = {k: v for k, v in info.state.items() if k != "data"}
    store = tmp_path_factory.mktemp("nodata")
    checkpoint.save(store / "bare" / checkpoint.LAST, model, meta)
    return store


def test_neighbors_without_recorded_data_or_data_flag(store_without_data_record, capsys):
    proc = run_here(capsys, "inspect", "bare", "--checkpoints", str(store_without_data_record), "-p", "the",
                    "--neighbors")
    assert_one_line_error(proc, "records no training text", "--data")


def test_neighbors_of_a_run_trained_on_several_files_asks_for_one(trained_run, tmp_path, capsys):
    """A run trained on a folder records the folder and a sha256 of its listing, not one text to search."""
    from gptkit import checkpoint

    model, _, info = checkpoint.load_for_inference(trained_run["run_dir"])
    meta = {k: info.meta[k] for k in ("model_config", "train_config", "tokenizer")}
    meta["state"] = {**info.state, "data": {**info.state["data"], "path": str(tmp_path), "files": 3}}
    checkpoint.save(tmp_path / "many" / checkpoint.LAST, model, meta)
    proc = run_here(capsys, "inspect", "many", "--checkpoints", str(tmp_path), "-p", "the", "--neighbors")
    assert_one_line_error(proc, "3 files", "--data")


@pytest.mark.parametrize("args,needle", [
    (["-p", "x" * 65], "block_size"),
    (["-p", "the", "--layer", "4"], "--layer 4 is out of range"),
    (["-p", "the", "--head", "9"], "--head 9 is out of range"),
    (["-p", "안녕"], "안"),
    (["--layer", "0"], "--prompt"),
    (["-p", "the", "--save", "view.png"], ".svg or .html"),
    (["-p", "the", "--data", "x.txt"], "--neighbors"),
    (["-p", ""], "empty"),
    (["ghost"], "ghost"),
    (["-c", "ghost"], "ghost"),
    (["shakespeare", "-c", "ghost"], "two checkpoints"),
])
def test_bad_input_gives_one_line_error(trained_run, capsys, args, needle):
    assert_one_line_error(run_here(capsys, "inspect", *args, "--checkpoints", str(trained_run["store"])), needle)
