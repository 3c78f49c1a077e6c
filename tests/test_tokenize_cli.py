"""`gptkit tokenize` as a user meets it: pipes, script outputs, the terminal view, compare, --out
datasets that `gptkit train` uses, and one-line errors for bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import shlex
import subprocess
import sys

import numpy as np
import pytest
import tiktoken

from gptkit.tokenizers import build_tokenizer
from gptkit.tokenizers.stored import load_tokenizer
from tests.conftest import ENGLISH, KOREAN, SHAKESPEARE, assert_one_line_error, run_cli, run_here

GPTKIT = f"{shlex.quote(sys.executable)} -m gptkit"
EXAMPLE = "안녕하세요 저는 ChatGPT입니다"


@pytest.fixture(scope="module")
def korean_sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("ko") / "ko.txt"
    text = KOREAN.read_text(encoding="utf-8")[:60_000]
    path.write_text(text[:text.rindex("\n") + 1], encoding="utf-8")  # whole lines, as a text file has
    return path


def shell(cmd: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, timeout=300)


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_ids_then_decode_round_trips_through_a_pipe(name, korean_sample, tmp_path):
    proc = shell(f"{GPTKIT} tokenize --ids -t {name} < {korean_sample} | {GPTKIT} tokenize --decode -t {name} > out.txt",
                 tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.txt").read_bytes() == korean_sample.read_bytes()


def test_bpe_ids_lines_round_trip_with_a_saved_tokenizer(korean_sample, tmp_path):
    proc = shell(f"{GPTKIT} tokenize --ids --lines -t bpe --vocab-size 512 --save-tokenizer tok.json "
                 f"--file {korean_sample} > ids.txt && {GPTKIT} tokenize --decode --lines -t tok.json < ids.txt > out.txt",
                 tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = korean_sample.read_text(encoding="utf-8")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == text
    id_lines = (tmp_path / "ids.txt").read_text().splitlines()
    lines = text.splitlines()
    tok = load_tokenizer(tmp_path / "tok.json")
    assert tok.vocab_size == 512 and len(id_lines) == len(lines)
    assert [int(i) for i in id_lines[3].split()] == tok.encode(lines[3])


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_ids_equal_tiktokens_own(name):
    text = ENGLISH.read_text(encoding="utf-8")[:5000] + EXAMPLE + " <|endoftext|> done"
    proc = run_cli("tokenize", "--ids", "-t", name, input=text)
    assert proc.returncode == 0, proc.stderr
    assert [int(i) for i in proc.stdout.split()] == tiktoken.get_encoding(name).encode_ordinary(text)
    count = run_cli("tokenize", "--count", "-t", name, text)
    assert count.stdout == f"{len(proc.stdout.split())}\n"


def test_json_gives_ids_pieces_and_offsets():
    proc = run_cli("tokenize", "--json", "-t", "gpt2", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ids = tiktoken.get_encoding("gpt2").encode_ordinary(EXAMPLE)
    assert doc["ids"] == ids and doc["count"] == len(ids) and doc["chars"] == len(EXAMPLE)
    data = EXAMPLE.encode()
    assert b"".join(bytes(t["bytes"]) for t in doc["tokens"]) == data
    for t in doc["tokens"]:
        assert data[t["byte_start"]:t["byte_end"]] == bytes(t["bytes"])
        if t["text"] is not None:
            assert EXAMPLE[t["start"]:t["end"]] == t["text"]
    chat = next(t for t in doc["tokens"] if t["text"] == " Chat")
    assert EXAMPLE[chat["start"]:chat["end"]] == " Chat"
    first = doc["tokens"][0]  # one byte of 안: no text of its own, a legible label, offsets on 안
    assert first["text"] is None and first["label"] == "<0xEC>" and (first["start"], first["end"]) == (0, 1)


def test_plain_view_on_a_pipe_shows_the_korean_example_legibly():
    proc = run_cli("tokenize", "-t", "gpt2", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    body, counts = proc.stdout.rstrip("\n").rsplit("\n", 1)
    assert "\x1b[" not in proc.stdout and "\ufffd" not in proc.stdout and "┃" not in proc.stdout
    assert body.startswith("{안=<0xEC>|<0x95>|<0x88>}|{녕=")
    assert "| Chat|G|PT|" in body
    n = len(tiktoken.get_encoding("gpt2").encode_ordinary(EXAMPLE))
    assert counts == f"{len(EXAMPLE)} characters, {len(EXAMPLE.encode())} bytes, {n} tokens, " \
                     f"{len(EXAMPLE.encode()) / n:.2f} bytes per token (gpt2, 50,257 ids)"


def run_in_terminal(args: list[str], no_color: bool) -> str:
    """Run the CLI with stdout on a pseudo-terminal, as a person at a terminal would."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update({"TERM": "xterm-256color", "COLUMNS": "100", **({"NO_COLOR": "1"} if no_color else {})})
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", *args], stdout=follower, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    return b"".join(chunks).decode("utf-8")


def test_terminal_view_has_colours_and_a_table_unless_no_color():
    coloured = run_in_terminal(["tokenize", "-t", "cl100k_base", EXAMPLE], no_color=False)
    assert "\x1b[" in coloured and "piece" in coloured and "bytes" in coloured
    assert "part of '안'" in coloured and "ec 95" in coloured and "\ufffd" not in coloured
    plain = run_in_terminal(["tokenize", "-t", "cl100k_base", EXAMPLE], no_color=True)
    assert "\x1b[" not in plain and "piece" not in plain and plain.startswith("{안=<0xEC><0x95>|<0x88>}")


def test_compare_table_numbers_match_independent_counts(korean_sample):
    proc = run_cli("tokenize", "--compare", "byte,gpt2,bpe", str(korean_sample), "--vocab-size", "512")
    assert proc.returncode == 0, proc.stderr
    header, *rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert header[:3] == ["tokenizer", "vocab", "tokens"]
    table = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    text = korean_sample.read_text(encoding="utf-8")
    data = text.encode()
    gpt2_ids = tiktoken.get_encoding("gpt2").encode_ordinary(text)
    assert int(table["byte"]["tokens"]) == len(data) and int(table["gpt2"]["tokens"]) == len(gpt2_ids)
    assert float(table["gpt2"]["tokens/char"]) == pytest.approx(len(gpt2_ids) / len(text), abs=1e-4)
    assert float(table["byte"]["split_chars"]) == pytest.approx(
        sum(len(c.encode()) for c in text if ord(c) > 127) / len(data), abs=1e-4)
    cut = len(data[:data.index(b"\n", int(len(data) * 0.9)) + 1].decode())
    bpe = build_tokenizer("bpe", text[:cut], 512)
    assert int(table["bpe"]["tokens"]) == len(bpe.encode(text))
    held = float(table["bpe"]["held-out_tokens/char"])
    assert held == pytest.approx(len(bpe.encode(text[cut:])) / len(text[cut:]), abs=1e-4)
    assert held < 0.6 * float(table["gpt2"]["held-out_tokens/char"])  # a BPE learnt on the text wins


def test_out_builds_a_dataset_that_train_uses_and_train_file_caches_the_same(tmp_path):
    """--out, then `gptkit train DIR`; `gptkit train FILE` caches the same arrays; --checkpoint reads the run."""
    proc = run_cli("tokenize", str(SHAKESPEARE), "--out", "ds", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "wrote" in proc.stderr
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "char" and meta["dtype"] == "uint16"
    assert meta["source"]["sha256"] == hashlib.sha256(SHAKESPEARE.read_bytes()).hexdigest()
    train_args = ["--max-iters", "3", "--eval-iters", "1", "--n-layer", "1", "--n-embd", "32", "--block-size", "16",
                  "-q"]
    from_dir = run_cli("train", "ds", "--run", "fromdir", *train_args, cwd=tmp_path)
    assert from_dir.returncode == 0, from_dir.stderr
    from_file = run_cli("train", str(SHAKESPEARE), "--run", "fromfile", *train_args, cwd=tmp_path)
    assert from_file.returncode == 0, from_file.stderr
    cached = tmp_path / "checkpoints" / "fromfile" / "data"
    for name in ("train.bin", "val.bin"):
        assert (cached / name).read_bytes() == (tmp_path / "ds" / name).read_bytes()
    assert np.fromfile(tmp_path / "ds" / "val.bin", dtype=np.uint16).size == meta["val_tokens"]
    # --checkpoint RUN: the checkpoint's own tokenizer (the char vocabulary of its training text)
    proc = run_cli("tokenize", "--ids", "--checkpoint", "fromfile", "ROMEO: speak", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    chars = "".join(sorted(set(SHAKESPEARE.read_text(encoding="utf-8"))))
    assert [int(i) for i in proc.stdout.split()] == [chars.index(c) for c in "ROMEO: speak"]


def test_train_file_is_streamed_and_learns_what_its_whole_text_teaches(tmp_path, capsys, monkeypatch):
    """--train-file goes through the readers and chunker that datasets use: the bpe it learns has the
    merges of one trained on the file's whole text as one string, --compare learns from it too, a
    .jsonl file teaches its records' text (not its JSON), and a 20 MB file is never held whole
    (tracemalloc's peak while the command runs)."""
    import tracemalloc

    monkeypatch.chdir(tmp_path)
    text = KOREAN.read_bytes().decode("utf-8")[:200_000]  # several of rustbpe's 64k-character pieces
    (tmp_path / "ko.txt").write_text(text[:text.rindex("\n") + 1], encoding="utf-8")
    proc = run_here(capsys, "tokenize", "--train-file", "ko.txt", "-t", "bpe", "--vocab-size", "512",
                    "--save-tokenizer", "bpe.json", "--ids", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    whole = build_tokenizer("bpe", text[:text.rindex("\n") + 1], 512)  # the file as one string
    assert load_tokenizer(tmp_path / "bpe.json").mergeable_ranks == whole.mergeable_ranks
    assert [int(i) for i in proc.stdout.split()] == whole.encode(EXAMPLE)
    (tmp_path / "small.txt").write_text("ROMEO: speak\n", encoding="utf-8")
    proc = run_here(capsys, "tokenize", "--compare", "char,byte", "--train-file", str(SHAKESPEARE), "small.txt")
    header, char_row, _ = [line.split("\t") for line in proc.stdout.splitlines()]
    assert dict(zip(header, char_row, strict=True))["vocab"] == "65" and char_row[-1] == "--train-file"
    (tmp_path / "docs.jsonl").write_text('{"text": "ab"}\n{"text": "cd"}\n', encoding="utf-8")
    proc = run_here(capsys, "tokenize", "--train-file", "docs.jsonl", "--save-tokenizer", "char.json", "--count", "dab")
    assert proc.stdout == "3\n" and load_tokenizer(tmp_path / "char.json").chars == "\nabcd"  # "ab\n\ncd"
    big = tmp_path / "big.txt"
    big.write_text(SHAKESPEARE.read_text(encoding="utf-8") * 18, encoding="utf-8")  # 20 MB
    tracemalloc.start()
    try:
        proc = run_here(capsys, "tokenize", "--train-file", str(big), "--count", "ROMEO")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert proc.returncode == 0 and proc.stdout == "5\n", proc.stderr
    assert peak < 8 * 2**20, peak  # a few blocks; the whole text as bytes and as a string was 40 MB


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in this process: the refusals are about the input, not the process
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bin.dat").write_bytes(b"\x7fELF\x02\x01\x00\x00" * 10)
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 ok\n".encode("latin-1"))
    cases = [
        (["tokenize", "--file", "empty.txt"], ["empty"]),
        (["tokenize", str(tmp_path / "empty.txt"), "--out", "d"], ["empty"]),
        (["tokenize", "--compare", "byte,gpt2", "bin.dat"], ["binary"]),
        (["tokenize", "latin1.txt", "--out", "d"], ["not valid UTF-8", "0xe9", "byte offset 3"]),
        (["tokenize", "--file", "latin1.txt"], ["byte offset 3"]),
        (["tokenize", "-t", "gpt-5", "hi"], ["unknown tokenizer", "'gpt-5'", "cl100k_base"]),
        (["tokenize", "-t", "o200k_base", "hi"], ["o200k_base", "TIKTOKEN_CACHE_DIR"]),
        (["tokenize", "-t", "bpe", "--vocab-size", "100", "hello there"], ["256"]),
        (["tokenize", str(SHAKESPEARE), "--out", "d", "-t", "bpe", "--vocab-size", "255"], ["256"]),
        (["tokenize", "--ids", "--json", "hi"], ["choose one of"]),
        (["tokenize", "--decode", "-t", "bpe", "1 2"], ["--save-tokenizer"]),
        (["tokenize", "--decode", "-t", "gpt2", "15496 x12"], ["'x12'", "not a token id"]),
        (["tokenize", "--decode", "-t", "byte", "300"], ["300", "vocab_size 256"]),
        (["tokenize", "--compare", "byte", "missing.txt"], ["does not exist"]),
        (["tokenize", "--out", "d"], ["--out needs"]),
        (["tokenize", "", "-t", "byte"], ["empty"]),
    ]
    for args, needles in cases:
        assert_one_line_error(run_here(capsys, *args), *needles)
    assert not (tmp_path / "d" / "meta.json").exists()


def test_char_tokenizer_lists_unknown_characters(tmp_path):
    made = run_cli("tokenize", "--count", "--file", str(ENGLISH), "--save-tokenizer", "en.json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    proc = run_cli("tokenize", "-t", "en.json", "Elizabeth 한글 ☃", cwd=tmp_path)
    assert_one_line_error(proc, "'한'", "'☃'", "--tokenizer byte or bpe")


def _stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8"))


def test_val_fraction_count_lines_stdin_and_a_saved_tokenizer_in_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = SHAKESPEARE.read_text(encoding="utf-8")[:40_000]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    data = text.encode()
    for fraction in ("0.1", "0.35"):  # held out: from the first line start after 1 - fraction of the bytes
        assert run_here(capsys, "tokenize", "t.txt", "--out", fraction, "-t", "byte", "--val-fraction", fraction,
                        "-q").returncode == 0
        cut = data.index(b"\n", int(len(data) * (1 - float(fraction)))) + 1
        meta = json.loads((tmp_path / fraction / "meta.json").read_text())
        assert meta["val_tokens"] == len(data) - cut and meta["train_tokens"] == cut, fraction
        assert np.fromfile(tmp_path / fraction / "val.bin", dtype=np.uint16).astype(np.uint8).tobytes() == data[cut:]

    gpt2 = tiktoken.get_encoding("gpt2")
    lines = text.split("\n")[:40]  # blank lines among them: a count of 0
    _stdin(monkeypatch, "\n".join(lines) + "\n")
    counted = run_here(capsys, "tokenize", "--count", "--lines", "-t", "gpt2", "-")
    assert counted.stdout.splitlines() == [str(len(gpt2.encode_ordinary(line))) for line in lines]
    for mode in ("--ids", "--json", "--count"):  # TEXT `-` reads the pipe: the same output as the text given
        _stdin(monkeypatch, EXAMPLE)
        piped = run_here(capsys, "tokenize", mode, "-t", "byte", "-")
        assert piped.returncode == 0 and piped.stdout == run_here(capsys, "tokenize", mode, "-t", "byte", EXAMPLE).stdout
    assert piped.stdout == f"{len(EXAMPLE.encode())}\n"

    (tmp_path / "en.txt").write_text(ENGLISH.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    assert run_here(capsys, "tokenize", "--count", "--file", "en.txt", "-t", "bpe", "--vocab-size", "300",
                    "--save-tokenizer", "en.json").returncode == 0
    proc = run_here(capsys, "tokenize", "--compare", "bpe,en.json", "t.txt", "--vocab-size", "300")
    header, *rows = [line.split("\t") for line in proc.stdout.splitlines()]
    table = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    saved = load_tokenizer(tmp_path / "en.json")  # used as saved (learnt from English), not learnt again here
    assert int(table["en.json (bpe)"]["tokens"]) == len(saved.encode(text)) != int(table["bpe"]["tokens"])
    assert table["en.json (bpe)"]["vocab"] == "300"
