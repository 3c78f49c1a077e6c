"""What `gptkit train` and `gptkit tokenize --out` learn from: files, folders, globs, stdin, gzip, zstd
and JSON lines, each made here from the shipped corpora. The dataset decodes to the inputs' documents
joined as documented (end-of-text for tiktoken encodings, a blank line otherwise), split per input
by a reference written here on whole strings; gpt2's ids are checked against tiktoken's own. Bad files
stop the build with the file and the byte offset, or are skipped and counted; a cached dataset is
reused only while every input is the same."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken

from gptkit.data.build import build_dataset, prepare_dataset
from gptkit.data.chunks import LOOKAHEAD, Splitter
from gptkit.data.sources import DataSpec, list_inputs, open_inputs
from gptkit.errors import InputError
from gptkit.tokenizers import build_tokenizer
from tests.conftest import ENGLISH, KOREAN, SHAKESPEARE, assert_one_line_error, run_cli, run_here

EOT = "<|endoftext|>"


def reference_split(docs: list[str], val_fraction: float) -> int:
    """The documented split of one input, on its whole text: the byte at 1 - val_fraction, moved past the
    next newline or to the next document's start (if one comes before the end, within LOOKAHEAD),
    else to the next character start."""
    data = "".join(docs).encode()
    starts, pos = set(), 0
    for d in docs:
        pos += len(d.encode())
        starts.add(pos)
    cut = int(len(data) * (1 - val_fraction))
    for p in range(cut + 1, min(len(data), cut + LOOKAHEAD)):
        if data[p - 1] == ord("\n") or p in starts:
            return p
    while cut < len(data) and data[cut] & 0xC0 == 0x80:
        cut += 1
    return cut


def reference_parts(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """An input's documents cut at its split: the training parts and the validation parts (no empty ones)."""
    split, pos = reference_split(docs, val_fraction), 0
    train, val = [], []
    for d in docs:
        b = d.encode()
        lo, pos = pos, pos + len(b)
        if pos <= split:
            train.append(d)
        elif lo >= split:
            val.append(d)
        else:
            train.append(b[:split - lo].decode())
            val.append(b[split - lo:].decode())
    return [p for p in train if p], [p for p in val if p]


def blank_line_join(parts: list[str]) -> str:
    out = ""
    for i, p in enumerate(parts):
        if i:
            out += "\n" if out.endswith("\n") else "\n\n"
        out += p
    return out


def paragraphs(path: Path, n: int, start: int = 0) -> list[str]:
    return [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()][start:start + n]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, list[str]], bytes]:
    """A folder of every kind, the documents each file holds (as the docs say), and a text for stdin."""
    root = tmp_path_factory.mktemp("corpus")
    folder = root / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / ".git").mkdir()
    docs: dict[str, list[str]] = {}
    korean = KOREAN.read_text(encoding="utf-8")[:30_000]
    (folder / "a-korean.txt").write_text(korean, encoding="utf-8")
    docs["a-korean.txt"] = [korean]
    english = ENGLISH.read_text(encoding="utf-8")[:20_000]
    (folder / "b-bom.md").write_bytes(b"\xef\xbb\xbf" + english.encode())  # a byte-order mark is not text
    docs["b-bom.md"] = [english]
    plays = SHAKESPEARE.read_text(encoding="utf-8")[:25_000]
    with gzip.open(folder / "sub" / "c-plays.txt.gz", "wb") as f:
        f.write(plays.encode())
    docs["sub/c-plays.txt.gz"] = [plays]
    records = paragraphs(SHAKESPEARE, 60) + paragraphs(KOREAN, 20)
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=i % 2 == 0) for i, t in enumerate(records)]
    lines.insert(5, json.dumps({"text": ""}))  # an empty record is no document
    (folder / "d-records.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # and a blank line
    docs["d-records.jsonl"] = records
    more = paragraphs(ENGLISH, 40, 10)  # JSON lines whose records have no newline: the split falls between them
    with gzip.open(folder / "sub" / "e-lines.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": t.replace("\n", " ")}) + "\n" for t in more))
    docs["sub/e-lines.jsonl.gz"] = [t.replace("\n", " ") for t in more]
    (folder / ".hidden.txt").write_text("left out\n", encoding="utf-8")
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    stdin = SHAKESPEARE.read_bytes()[50_000:62_000]
    return folder, docs, stdin


ORDER = ["a-korean.txt", "b-bom.md", "d-records.jsonl", "sub/c-plays.txt.gz", "sub/e-lines.jsonl.gz"]  # depth first


@pytest.mark.parametrize("name", ["gpt2", "char", "bpe"])
def test_every_input_kind_decodes_to_its_documents_joined_as_documented(name, corpus, tmp_path):
    folder, docs, stdin_bytes = corpus
    extra = tmp_path / "extra.txt"
    extra.write_text(ENGLISH.read_text(encoding="utf-8")[60_000:70_000], encoding="utf-8")
    spec = DataSpec((str(folder), "-", str(extra)), stdin=io.BytesIO(stdin_bytes))
    with open_inputs(spec, tmp_path / "cache") as inputs:
        assert [i.name for i in inputs] == [str(folder / n) for n in ORDER] + ["-", str(extra)]
        ds = build_dataset(inputs, tmp_path / "ds", name, 400, 0.1, chunk_chars=5000)
    assert not list((tmp_path / "cache").iterdir())  # stdin's spool is gone
    all_docs = [docs[n] for n in ORDER] + [[stdin_bytes.decode()], [extra.read_text(encoding="utf-8")]]
    train_parts, val_parts = [], []
    for d in all_docs:
        t, v = reference_parts(d, 0.1)
        train_parts += t
        val_parts += v
    tok = ds.tokenizer
    if name == "gpt2":  # joined by end-of-text; the ids are tiktoken's own, document by document
        assert ds.meta["join"] == "end-of-text"
        assert tok.decode(ds.train.tolist()) == EOT.join(train_parts)
        assert tok.decode(ds.val.tolist()) == EOT.join(val_parts)
        enc = tiktoken.get_encoding("gpt2")
        expected = []
        for i, part in enumerate(train_parts):
            expected += ([enc.eot_token] if i else []) + enc.encode_ordinary(part)
        assert ds.train.tolist() == expected
    else:  # joined by a blank line, encoded as one text
        assert ds.meta["join"] == "blank line"
        train_text, val_text = blank_line_join(train_parts), blank_line_join(val_parts)
        assert tok.decode(ds.train.tolist()) == train_text and tok.decode(ds.val.tolist()) == val_text
        if name == "char":
            assert ds.train.tolist() == build_tokenizer("char", train_text + val_text).encode(train_text)
        else:  # learnt from the training text alone
            assert ds.train.tolist() == build_tokenizer("bpe", train_text, 400).encode(train_text)
    recorded = {i["name"]: i for i in ds.meta["inputs"]}
    for n in ORDER:
        path = folder / n
        r = recorded[str(path)]
        assert (r["path"], r["size"], r["sha256"]) == (str(path), path.stat().st_size,
                                                       hashlib.sha256(path.read_bytes()).hexdigest())
        assert r["documents"] == len(docs[n])
        assert r["train_bytes"] == reference_split(docs[n], 0.1)
        assert r["train_bytes"] + r["val_bytes"] == len("".join(docs[n]).encode())
    assert recorded["-"]["sha256"] == hashlib.sha256(stdin_bytes).hexdigest() and recorded["-"]["path"] == "-"


def test_the_split_looks_for_a_line_start_only_so_far():
    """A newline just past the cut moves the split there; one more than LOOKAHEAD past it does not (the
    split stays at the cut, at a character boundary), and neither does the text's own last newline."""
    def split_of(text: str, piece: int = 1 << 16) -> int:
        data = text.encode()
        s = Splitter(len(data), 0.5)
        got = []
        for i in range(0, len(text), piece):
            got += s.feed((text[i:i + piece], len(text[i:i + piece].encode())))
        got += s.finish()
        assert "".join(p[0] for side, p in got if side == "train") + "".join(
            p[0] for side, p in got if side == "val") == text
        assert len("".join(p[0] for side, p in got if side == "train").encode()) == s.split
        return s.split

    n = 3 * LOOKAHEAD
    assert split_of("가" * (n // 3)) == n // 2 + (3 - n // 2 % 3) % 3  # no newline: the next character start
    near = "x" * (n // 2 + 1000) + "\n" + "y" * (n // 2)
    assert split_of(near) == n // 2 + 1001
    far = "x" * (n // 2 + LOOKAHEAD + 1) + "\n" + "y" * 1000
    assert split_of(far) == int(len(far) * 0.5)
    assert split_of("ab\ncd\n") == 3 and split_of("abcd\n") == 2


BAD = {  # file name: (its bytes, what the one error line says)
    "b-binary.txt": (b"hello\n\x00\x01\x02", "looks like a binary file (a NUL byte at byte offset 6)"),
    "c-latin1.txt": ("caf\u00e9 au lait\n".encode("latin-1"), "bad byte 0xe9 at byte offset 3"),
    "d-empty.txt": (b"", "is empty"),
    "e-blank.txt": (b" \n\t\n", "only whitespace"),
    "f-notgzip.txt.gz": (b"plain text, not gzip\n", "not a valid gzip file"),
    "g-cut.txt.gz": (gzip.compress("안녕하세요\n".encode() * 50)[:-30], "not a valid gzip file"),
    "h-badjson.jsonl": (b'{"text": "fine"}\n{"text": oops}\n', "line 2 (byte offset 17) is not valid JSON"),
    "i-nofield.jsonl": (b'{"text": "fine"}\n{"body": "x"}\n', "line 2 (byte offset 17) has no 'text' field"),
    "j-latin1.txt.gz": (gzip.compress("ok\ncaf\u00e9\n".encode("latin-1")), "bad byte 0xe9 at byte offset 6"),
}


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_file_in_a_folder_is_named_with_its_byte_offset(bad, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a-good.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    (tmp_path / "in" / bad).write_bytes(BAD[bad][0])
    proc = run_here(capsys, "tokenize", "in", "--out", "ds", "-t", "byte")
    assert_one_line_error(proc, f"'in/{bad}'", BAD[bad][1], "--skip-bad")
    assert proc.returncode == 3 and not (tmp_path / "ds").exists()


def test_skip_bad_leaves_every_bad_file_out_and_counts_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    good = SHAKESPEARE.read_text(encoding="utf-8")[:3000]
    (tmp_path / "in" / "a-good.txt").write_text(good, encoding="utf-8")
    for name, (data, _) in BAD.items():
        (tmp_path / "in" / name).write_bytes(data)
    proc = run_here(capsys, "tokenize", "in", "--out", "ds", "-t", "byte", "--skip-bad", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"skipped {len(BAD)} bad files (--skip-bad): 'in/b-binary.txt' (looks like")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["in/a-good.txt"]
    assert {s["name"]: s["reason"] for s in meta["skipped"]}.keys() == {f"in/{n}" for n in BAD}
    assert all(BAD[s["name"][3:]][1] in s["reason"] for s in meta["skipped"])
    assert meta["train_tokens"] + meta["val_tokens"] == len(good.encode())
    everything_bad = run_here(capsys, "tokenize", "in/d-empty.txt", "in/e-blank.txt", "--out", "ds2", "--skip-bad")
    assert_one_line_error(everything_bad, "all 2 input files were skipped", "is empty")


def test_folders_leave_out_hidden_files_the_store_and_what_glob_does_not_match(tmp_path):
    f = tmp_path / "notes"
    for rel in ("a.md", "b.txt", "sub/c.md", "sub/deep/d.txt", ".hidden.md", ".git/e.md", "store/run/data/x.md"):
        (f / rel).parent.mkdir(parents=True, exist_ok=True)
        (f / rel).write_text(f"{rel}\n", encoding="utf-8")
    names = lambda globs=(), exclude=(): [i.name for i in list_inputs([str(f)], globs, exclude)]  # noqa: E731
    assert names(exclude=[f / "store"]) == [str(f / n) for n in ("a.md", "b.txt", "sub/c.md", "sub/deep/d.txt")]
    assert names(["*.md"], [f / "store"]) == [str(f / "a.md"), str(f / "sub/c.md")]
    assert names(["sub/*"]) == [str(f / "sub/c.md"), str(f / "sub/deep/d.txt")]
    assert names(["**/*.txt"]) == [str(f / "b.txt"), str(f / "sub/deep/d.txt")]
    with pytest.raises(InputError, match="'.*notes' is a directory with no files matching --glob \\*.rst"):
        list_inputs([str(f)], ["*.rst"])


def test_stdin_and_zstd_from_the_command_line(tmp_path):
    text = KOREAN.read_text(encoding="utf-8")[:20_000]
    proc = run_cli("tokenize", "-", "--out", "ds", "-t", "byte", "-q", cwd=tmp_path, input=text)
    assert proc.returncode == 0, proc.stderr
    ds_bytes = (tmp_path / "ds" / "train.bin").read_bytes() + (tmp_path / "ds" / "val.bin").read_bytes()
    assert bytes(ds_bytes[::2]) == text.encode() and not list(tmp_path.glob(".stdin-*"))  # uint16 ids: the bytes
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command is not installed: no .zst file to read")
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    subprocess.run(["zstd", "-q", str(tmp_path / "t.txt"), "-o", str(tmp_path / "t.txt.zst")], check=True)
    proc = run_cli("tokenize", "t.txt.zst", "--out", "zs", "-t", "byte", "-q", cwd=tmp_path)
    try:
        import zstandard  # noqa: F401
    except ImportError:
        if sys.version_info < (3, 14):  # no compression.zstd either: one line naming the module
            assert_one_line_error(proc, "zstandard module", "pip install 'gptkit[zstd]'", "zstd -d")
            assert not (tmp_path / "zs").exists()
            return
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "zs" / "train.bin").read_bytes() == (tmp_path / "ds" / "train.bin").read_bytes()
    (tmp_path / "cut.txt.zst").write_bytes((tmp_path / "t.txt.zst").read_bytes()[:-100])  # cut short: no quiet end
    assert_one_line_error(run_cli("tokenize", "cut.txt.zst", "--out", "cs", "-t", "byte", cwd=tmp_path),
                          "'cut.txt.zst' is not a valid zstd file", "cut short")


def test_a_cached_dataset_is_reused_only_while_every_input_is_the_same(tmp_path):
    f = tmp_path / "texts"
    f.mkdir()
    (f / "a.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    (f / "b.txt").write_text(ENGLISH.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    out = tmp_path / "run" / "data"

    def prepare(name="byte", refs=(str(f),), val=0.1, field="text"):
        ds = prepare_dataset(list_inputs(list(refs)), name, None, val, out, text_field=field)
        return ds, (out / "train.bin").stat().st_mtime_ns

    first, stamp = prepare()
    first_train = bytes(first.train)
    splits = [(i["train_bytes"], i["val_bytes"]) for i in first.meta["inputs"]]
    assert prepare()[1] == stamp  # same inputs, same settings: reused
    changes = {
        "a letter changed (same size)": lambda: (f / "a.txt").write_text(
            (f / "a.txt").read_text().replace("First", "Worst", 1)),
        "a file added": lambda: (f / "c.txt").write_text(KOREAN.read_text(encoding="utf-8")[:9000]),
        "a file removed": lambda: (f / "c.txt").unlink(),
        "a file moved": lambda: (f / "b.txt").rename(f / "b2.txt"),
    }
    for what, change in changes.items():
        change()
        ds, new = prepare()
        assert new != stamp, what
        stamp = new
        assert prepare()[1] == stamp, what  # and reused again after
        if what == "a letter changed (same size)":  # the new text's hash recorded, its tokens in the arrays
            assert ds.meta["inputs"][0]["sha256"] == hashlib.sha256((f / "a.txt").read_bytes()).hexdigest()
            assert bytes(ds.train) != first_train and bytes(ds.train).replace(b"W\0o\0r", b"F\0i\0r", 1) == first_train
        if what == "a file added":  # the earlier files keep their own split: no validation text moves to training
            assert [(i["train_bytes"], i["val_bytes"]) for i in ds.meta["inputs"][:2]] == splits
    for settings in ({"name": "char"}, {"val": 0.2}, {"field": "body"}, {"refs": (str(f / "a.txt"),)}):
        ds, new = prepare(**settings)
        assert new != stamp, settings
        stamp = new
