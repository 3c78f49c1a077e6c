"""`gptkit tokenize`'s plain view, --json and --ids stream a long text in runs of CHUNK_TOKENS tokens: the
output equals the whole text worked out at once, byte for byte (a character split across tokens
stays one segment where a run ends inside it), and memory does not grow with the token count."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tiktoken

from gptkit.cli import main
from gptkit.cli.views import tokenize_view as render
from gptkit.introspect import tokens as tokenview
from gptkit.introspect.tokens import Counts, Token, iter_tokens, label, visible_char
from gptkit.tokenizers import build_tokenizer
from tests.conftest import ENGLISH, KOREAN, SHAKESPEARE


def whole_text_tokens(tok, text: str, ids: list[int]) -> list[Token]:
    """Every token as the views worked it out before streaming, found here independently: offsets by
    walking the text's characters in Python, each piece's bytes and label computed afresh."""
    char_of_byte: list[int] = []  # per byte of the text (and one past the end): its character
    starts_char: list[bool] = []  # per byte (and one past the end): does a character start there
    for c, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        char_of_byte += [c] * n
        starts_char += [True] + [False] * (n - 1)
    char_of_byte.append(len(text))
    starts_char.append(True)
    out, pos = [], 0
    for i in ids:
        piece = tok.token_bytes(i)
        end = pos + len(piece)
        partial = not (starts_char[pos] and starts_char[end])
        out.append(Token(i, None if partial else piece.decode("utf-8"), list(piece), label(piece), char_of_byte[pos],
                         char_of_byte[end - 1] + 1, pos, end))
        pos = end
    assert pos == len(text.encode("utf-8"))
    return out


def whole_text_plain(tok, text: str, tokens: list[Token]) -> str:
    """The plain view as one string, as it was made before streaming: segments over the whole list."""
    parts: list[str] = []
    k = 0
    while k < len(tokens):
        first, end, split = k, tokens[k].end, tokens[k].text is None
        k += 1
        while k < len(tokens) and tokens[k].start < end:  # shares a character with the segment so far
            end, split = max(end, tokens[k].end), True
            k += 1
        seg = text[tokens[first].start:end]
        if parts and not parts[-1].endswith("\n"):
            parts.append("|")
        labels = "|".join(t.label for t in tokens[first:k])
        if split:
            labels = "{" + "".join(map(visible_char, seg)) + "=" + labels + "}"
        parts.append(labels + ("\n" if seg.endswith("\n") else ""))
    body = "".join(parts)
    counts = Counts(len(text), len(text.encode("utf-8")), len(tokens))
    return body + ("" if body.endswith("\n") else "\n") + render.counts_line(tok, counts) + "\n"


def whole_text_json(tok, text: str, ids: list[int]) -> str:
    """The --json document as one `json.dumps`, as it was made before streaming."""
    doc = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "chars": len(text),
           "bytes": len(text.encode("utf-8")), "count": len(ids), "ids": ids,
           "tokens": [t.__dict__ for t in whole_text_tokens(tok, text, ids)]}
    return json.dumps(doc, ensure_ascii=False)


def korean(n: int) -> str:
    return KOREAN.read_text(encoding="utf-8")[:n]


def mixed() -> str:
    """English, Korean, and what trips offsets up: CRLF, tabs, control characters, emoji (4 bytes, one
    with a skin-tone modifier), a combining accent, special-token text, no final newline."""
    odd = "a\r\nb\tc\x1b[0m \x7f\x85 😀👍🏽 e\u0301 <|endoftext|> 한\u3000글\u00a0끝"
    return ENGLISH.read_text(encoding="utf-8")[:30_000] + korean(20_000) + odd * 50


CASES = {  # tokenizer, text, run size (in tokens, prime: the runs end at many different places)
    "gpt2-korean": ("gpt2", lambda: korean(60_000), 997),
    "byte-korean": ("byte", lambda: korean(15_000), 1009),
    "cl100k-mixed": ("cl100k_base", mixed, 991),
    "char-mixed": ("char", mixed, 1013),
}


@pytest.mark.parametrize("case", CASES)
def test_streamed_plain_view_json_and_ids_equal_the_whole_text_at_once(case, monkeypatch, capsys, tmp_path):
    name, make_text, chunk = CASES[case]
    text = make_text()
    path = tmp_path / "text.txt"
    path.write_bytes(text.encode("utf-8"))
    tok = build_tokenizer(name, text)
    ids = tok.encode(text)
    tokens = whole_text_tokens(tok, text, ids)
    assert len(ids) > 8 * chunk  # many runs
    # runs that end inside a character: the split character's tokens sit on both sides of the edge
    inside = [k for k in range(chunk, len(ids), chunk) if tokens[k].start < tokens[k - 1].end]
    if name in ("gpt2", "byte"):
        assert len(inside) >= 5, inside
    monkeypatch.setattr(tokenview, "CHUNK_TOKENS", chunk)

    def run(*args: str) -> str:
        with pytest.raises(SystemExit) as e:
            main(["tokenize", "-t", name, "--file", str(path), *args])
        out = capsys.readouterr()
        assert e.value.code == 0 and out.err == "", out.err
        return out.out

    plain = run()
    assert plain == whole_text_plain(tok, text, tokens)
    assert "\ufffd" not in plain
    assert run("--json") == whole_text_json(tok, text, ids) + "\n"
    assert run("--ids") == " ".join(map(str, ids)) + "\n"
    lines = text.split("\n")[:200]  # --lines: one document per line, sharing the work per id
    path.write_bytes("\n".join(lines).encode("utf-8"))
    per_line = build_tokenizer(name, "\n".join(lines))  # char learns the text it is given
    assert run("--json", "--lines") == "".join(whole_text_json(per_line, line, per_line.encode(line)) + "\n"
                                               for line in lines)
    # and they were written in parts as they were made, never as one string
    counts = Counts(len(text), len(text.encode("utf-8")), len(ids))
    arr = np.asarray(ids)
    assert len(list(render.plain_view(tok, text, iter_tokens(tok, text, arr), counts))) > len(ids) // chunk
    assert len(list(render.json_document(tok, text, arr))) > 2 * (len(ids) // chunk)


def test_segments_join_a_character_split_across_a_run_edge():
    """gpt2 gives 안 three byte tokens; with runs of 2 tokens the first run ends inside it."""
    tok = build_tokenizer("gpt2")
    text = "안녕 x"
    ids = tok.encode(text)
    tokens = list(iter_tokens(tok, text, ids, size=2))
    assert tokens == whole_text_tokens(tok, text, ids)
    segs = [(seg, [t.label for t in group], split) for seg, group, split in tokenview.iter_segments(text, tokens)]
    assert segs == [("안", ["<0xEC>", "<0x95>", "<0x88>"], True), ("녕", ["<0xEB>", "<0x85>", "<0x95>"], True),
                    (" x", [" x"], False)]


def peak_mb(out_path, *args: str) -> int:
    """Peak resident memory (MB) of `python -m gptkit ARGS > out_path`, measured from a fresh parent
    whose only child it is (RUSAGE_CHILDREN keeps the largest child ever waited for)."""
    code = ("import resource, subprocess, sys\n"
            "with open(sys.argv[1], 'wb') as out:\n"
            "    subprocess.run([sys.executable, '-m', 'gptkit', *sys.argv[2:]], stdout=out, check=True)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out_path), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def test_peak_memory_of_the_plain_view_and_json_stays_bounded(tmp_path):
    """A 2.3 MB Korean and English file is 1.8 million gpt2 tokens. Holding a Token per token made the
    plain view grow by 0.98 GB and --json by 1.98 GB (measured before streaming); streamed, they grow
    by 12 and 30 MB: the text, its ids, and one run of tokens."""
    path = tmp_path / "big.txt"
    path.write_bytes((KOREAN.read_bytes() + ENGLISH.read_bytes()) * 2)  # the shipped slices, twice
    base = peak_mb(tmp_path / "tiny.out", "tokenize", "-t", "gpt2", "--json", "hello")
    plain = peak_mb(tmp_path / "plain.out", "tokenize", "-t", "gpt2", "--file", str(path))
    as_json = peak_mb(tmp_path / "json.out", "tokenize", "-t", "gpt2", "--json", "--file", str(path))
    ids = peak_mb(tmp_path / "ids.out", "tokenize", "-t", "gpt2", "--ids", "--file", str(path))
    assert plain - base < 150 and as_json - base < 150 and ids - base < 150, (base, plain, as_json, ids)
    n = len(tiktoken.get_encoding("gpt2").encode_ordinary(path.read_text(encoding="utf-8")))
    assert n > 1_500_000
    per_token = path.stat().st_size / n
    assert (tmp_path / "plain.out").read_text(encoding="utf-8").endswith(
        f" {n:,} tokens, {per_token:.2f} bytes per token (gpt2, 50,257 ids)\n")
    with open(tmp_path / "json.out", "rb") as f:
        head = f.read(200).decode("utf-8", errors="replace")
        f.seek(-3, 2)
        tail = f.read()
    assert head.startswith('{"tokenizer": "gpt2", "vocab_size": 50257, "chars": ') and f'"count": {n}, ' in head
    assert tail == b"]}\n"


def test_a_reader_that_goes_away_or_a_full_disk_mid_stream(tmp_path):
    """`| head -c 100` stops the stream quietly (exit 0); a full disk is one error line, exit 1."""
    path = tmp_path / "ko.txt"
    path.write_bytes(SHAKESPEARE.read_bytes()[:200_000] + KOREAN.read_bytes()[:200_000])
    for mode in ([], ["--json"]):
        cmd = [sys.executable, "-m", "gptkit", "tokenize", "-t", "gpt2", "--file", str(path), *mode]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert len(proc.stdout.read(100)) == 100
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0 and proc.stderr.read() == b""
        with open("/dev/full", "w") as full:
            done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert done.returncode == 1 and done.stderr == "error: writing the output failed: No space left on device\n"
