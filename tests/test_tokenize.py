"""The library behind `gptkit tokenize`: safe chunk cuts, the streaming dataset builder, token views
and the comparison table, on real English and Korean text, checked against tiktoken and
independent counts."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from gptkit.data.build import build_dataset, prepare_dataset
from gptkit.data.chunks import split_text
from gptkit.data.dataset import load_dataset, split_point
from gptkit.data.sources import list_inputs, read_text
from gptkit.errors import InputError, TokenizerError
from gptkit.introspect.tokens import boundaries, compare, iter_tokens, label, segments, token_byte_lengths
from gptkit.tokenizers import build_tokenizer
from gptkit.tokenizers.bpe import train_bpe_from_chunks
from tests.conftest import ENGLISH, KOREAN, SHAKESPEARE


@cache
def mixed_text() -> str:
    """Korean and English prose plus a stretch built to break naive newline cuts: runs of spaces and
    newlines, CRLF, contractions, '/' after newlines, ideographic and no-break spaces, digits."""
    rng = random.Random(0)
    alphabet = list(" \n\n\r\t  .,/'\"-_0123456789abcXYZ한글\u3000\u00a0é") + ["'s", "'ll", "\r\n", "  \n", "\n/"]
    tricky = "".join(rng.choice(alphabet) for _ in range(60_000))
    return (KOREAN.read_text(encoding="utf-8")[:150_000] + ENGLISH.read_text(encoding="utf-8")[:200_000]
            + tricky + "\nThe end.\n")


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mixed") / "mixed.txt"
    path.write_bytes(mixed_text().encode("utf-8"))
    return path


def naive_newline_pieces(text: str, size: int):
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        yield text[start:end]
        start = end


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base", "bpe"])
def test_safe_cuts_encode_exactly_like_the_whole_text(name):
    text = mixed_text()
    tok = build_tokenizer(name, text[:100_000], 512)
    whole = tok.enc.encode_ordinary(text)
    for size in (40, 3000, 50_000):
        pieces = list(split_text(text, size))
        assert "".join(pieces) == text and len(pieces) > len(text) // (size * 4)
        assert [i for p in pieces for i in tok.enc.encode_ordinary(p)] == whole, size
    if name != "bpe":  # the check has teeth: cutting after any newline changes the tokens of this text
        naive = [i for p in naive_newline_pieces(text, 40) for i in tok.enc.encode_ordinary(p)]
        assert naive != whole


def test_bpe_training_does_not_depend_on_how_the_text_is_cut():
    text = mixed_text()[:250_000]
    merges = {size: train_bpe_from_chunks(split_text(text, size), 600).mergeable_ranks for size in (500, 1 << 16)}
    assert merges[500] == merges[1 << 16] == build_tokenizer("bpe", text, 600).mergeable_ranks


def files(ds_path: Path) -> dict[str, bytes]:
    return {n: (ds_path / n).read_bytes() for n in ("train.bin", "val.bin", "meta.json")}


@pytest.mark.parametrize("name", ["char", "byte", "gpt2", "bpe"])
def test_dataset_is_identical_whatever_the_chunk_size_and_equals_whole_encoding(name, mixed_file, tmp_path):
    text = mixed_text()
    built = {}
    for chunk in (777, 1 << 20):
        ds = build_dataset(list_inputs([str(mixed_file)]), tmp_path / f"c{chunk}", name, 512, 0.1, chunk_chars=chunk)
        built[chunk] = files(ds.path)
    assert built[777] == built[1 << 20]
    ds = load_dataset(tmp_path / "c777")
    cut = split_point(text, 0.1)
    train_text, val_text = text[:cut], text[cut:]
    assert text[cut - 1] == "\n" and 0.89 < len(train_text.encode()) / len(text.encode()) < 0.91
    tok = ds.tokenizer
    assert tok.decode(ds.train.tolist()) == train_text and tok.decode(ds.val.tolist()) == val_text
    expected = {  # independent encodings of each side, whole
        "char": lambda: build_tokenizer("char", text).encode(train_text),
        "byte": lambda: list(train_text.encode("utf-8")),
        "gpt2": lambda: tiktoken.get_encoding("gpt2").encode_ordinary(train_text),
        "bpe": lambda: build_tokenizer("bpe", train_text, 512).encode(train_text),  # learnt from training text only
    }[name]()
    assert ds.train.tolist() == expected
    m = ds.meta
    assert (m["train_chars"], m["val_chars"]) == (len(train_text), len(val_text))
    assert (m["train_tokens"], m["val_tokens"]) == (len(ds.train), len(ds.val))
    assert m["source"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert m["dtype"] == ("uint32" if tok.vocab_size > 65536 else "uint16")
    assert sorted(p.name for p in (tmp_path / "c777").iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_train_and_tokenize_out_share_one_builder(tmp_path):
    """`gptkit train FILE.txt` caches exactly the folder `gptkit tokenize FILE --out` writes."""
    cached = prepare_dataset(list_inputs([str(SHAKESPEARE)]), "char", None, 0.1, tmp_path / "run" / "data")
    out = build_dataset(list_inputs([str(SHAKESPEARE)]), tmp_path / "out", "char", None, 0.1)
    assert files(cached.path)["train.bin"] == files(out.path)["train.bin"]
    assert files(cached.path)["val.bin"] == files(out.path)["val.bin"]
    assert cached.meta["val_chars"] == out.meta["val_chars"] and cached.meta["tokenizer"] == out.meta["tokenizer"]


@pytest.mark.parametrize("name", ["char", "byte", "bpe", "gpt2", "cl100k_base"])
@pytest.mark.parametrize("path", [KOREAN, ENGLISH], ids=["korean", "english"])
def test_encode_array_equals_encode_and_round_trips(name, path):
    text = path.read_text(encoding="utf-8")[:60_000] + "a document<|endoftext|>the next <|fim_prefix|>\n"
    tok = build_tokenizer(name, text, 512)
    ids = tok.encode_array(text)
    assert ids.tolist() == tok.encode(text)
    assert tok.decode(ids.tolist()) == text
    if name in ("gpt2", "cl100k_base"):  # identical to tiktoken's own, special-token text stays text
        assert ids.tolist() == tiktoken.get_encoding(name).encode_ordinary(text)
        assert tok.eot_id not in ids


def test_char_encoder_lists_unknown_characters():
    tok = build_tokenizer("char", ENGLISH.read_text(encoding="utf-8")[:50_000])
    with pytest.raises(TokenizerError, match="'한'.*--tokenizer byte or bpe"):
        tok.encode_array("Elizabeth 한")


def test_bad_files_are_one_line_input_errors(tmp_path):
    cases = {
        "empty.txt": (b"", "empty"),
        "bom-only.txt": (b"\xef\xbb\xbf", "empty"),
        "binary.bin": (b"PK\x03\x04\x00\x00data", "binary"),
        "blank.txt": (b" \n\t\n" * 1000, "only whitespace"),
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=needle) as err:
            build_dataset(list_inputs([str(tmp_path / name)]), tmp_path / "out", "byte")
        assert "\n" not in str(err.value)
    # invalid UTF-8 far into the file, across block boundaries: the byte offset Python's own decoder
    # gives for the whole file is named, whatever the chunk size
    good = "안녕하세요 hello\n".encode() * 500
    for bad in (b"\xff tail\n", b"x\xea\x28\xa1 more text\n", "끝".encode()[:2]):
        data = good + bad
        with pytest.raises(UnicodeDecodeError) as ref:
            data.decode("utf-8")
        (tmp_path / "bad.txt").write_bytes(data)
        start = ref.value.start
        needle = (f"0x{data[start]:02x} at byte offset {start}" if ref.value.reason != "unexpected end of data"
                  else f"ends in the middle of a character \\(its last 2 byte\\(s\\), from byte offset {start}")
        for chunk in (100, 1001, 1 << 20):
            with pytest.raises(InputError, match=needle):
                build_dataset(list_inputs([str(tmp_path / "bad.txt")]), tmp_path / "out", "byte", chunk_chars=chunk)
    assert not (tmp_path / "out" / "meta.json").exists() and not list((tmp_path / "out").glob(".*tmp*"))
    with pytest.raises(InputError, match="does not exist"):
        list_inputs([str(tmp_path / "nope.txt")])
    with pytest.raises(TokenizerError, match="256"):
        build_dataset(list_inputs([str(SHAKESPEARE)]), tmp_path / "out", "bpe", vocab_size=255)


def test_bom_is_skipped_and_text_matches_reading_it(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "첫 줄\n둘째 줄\n".encode() * 50)
    ds = build_dataset(list_inputs([str(path)]), tmp_path / "d", "char")
    assert ds.tokenizer.decode(ds.train.tolist() + ds.val.tolist()) == read_text(path)
    assert ds.meta["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # of the file as it is
    assert "\ufeff" not in ds.tokenizer.chars and ds.meta["inputs"][0]["train_bytes"] + ds.meta["inputs"][0][
        "val_bytes"] == path.stat().st_size - 3


def test_peak_memory_stays_bounded_on_a_large_file(tmp_path):
    """A 48 MB file: the build's resident memory grows by far less than the file (never holds it)."""
    path = tmp_path / "big.txt"
    chunk = SHAKESPEARE.read_bytes() + KOREAN.read_bytes()
    with open(path, "wb") as f:
        for _ in range(17):
            f.write(chunk)
    code = (
        "import resource, sys; from pathlib import Path\n"
        "from gptkit.data.build import build_dataset\nfrom gptkit.data.sources import list_inputs\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "ds = build_dataset(list_inputs([sys.argv[1]]), Path(sys.argv[2]), 'byte')\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(base // 1024, peak // 1024, ds.meta['train_tokens'] + ds.meta['val_tokens'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "d")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    base_mb, peak_mb, n_tokens = map(int, proc.stdout.split())
    assert n_tokens == path.stat().st_size
    assert peak_mb - base_mb < 40, (base_mb, peak_mb)  # the file is 48 MB, its ids 96 MB


def test_token_boundaries_and_labels_on_korean_gpt2():
    text = KOREAN.read_text(encoding="utf-8")[:3000]
    tok = build_tokenizer("gpt2")
    ids = tok.encode(text)
    data = text.encode("utf-8")
    tokens = list(iter_tokens(tok, text, ids))
    n_partial = 0
    for t in tokens:
        piece = bytes(t.bytes)
        assert data[t.byte_start:t.byte_end] == piece and piece == tok.token_bytes(t.id)
        alone = piece.decode("utf-8") if _valid(piece) else None  # independent: the piece alone is not UTF-8
        assert t.text == alone
        n_partial += alone is None
        assert text[t.start:t.end].encode("utf-8").find(piece) != -1  # the characters it touches hold it
        assert "\ufffd" not in t.label
    assert n_partial > len(tokens) // 3  # gpt2 splits most Hangul syllables
    assert label("안".encode()[:2]) == "<0xEC><0x95>" and label(b"\x88 x\n") == "<0x88> x\\n"
    segs = segments(text, tokens)
    assert "".join(s for s, *_ in segs) == text  # the text view shows the text, each character once
    assert [k for _, k, _, _ in segs] == sorted({k for _, k, _, _ in segs})
    lengths = token_byte_lengths(tok)
    b = boundaries(data, np.asarray(ids), lengths)
    assert b.partial.sum() == n_partial and b.byte_end[-1] == len(data)


def test_compare_numbers_match_independent_counts():
    text = KOREAN.read_text(encoding="utf-8")[:200_000]
    rows = {r.tokenizer: r for r in compare(text, ["byte", "gpt2", "bpe", "char"], vocab_size=1024)}
    data = text.encode("utf-8")
    # the held-out part, found independently: 90% of the bytes, moved past the next newline
    cut = len(data[:data.index(b"\n", int(len(data) * 0.9)) + 1].decode("utf-8"))
    held_out = text[cut:]
    byte, gpt2, bpe, char = rows["byte"], rows["gpt2"], rows["bpe"], rows["char"]
    assert byte.tokens == len(data) and byte.vocab_size == 256
    assert byte.split_share == pytest.approx(sum(len(c.encode()) for c in text if ord(c) > 127) / len(data))
    ref = tiktoken.get_encoding("gpt2")
    gpt2_ids = ref.encode_ordinary(text)
    assert gpt2.tokens == len(gpt2_ids) and gpt2.bytes_per_token == pytest.approx(len(data) / len(gpt2_ids))
    invalid = sum(1 for i in gpt2_ids if not _valid(ref.decode_single_token_bytes(i)))
    assert gpt2.split_share == pytest.approx(invalid / len(gpt2_ids))
    assert gpt2.held_out_tokens_per_char == pytest.approx(len(ref.encode_ordinary(held_out)) / len(held_out))
    learnt = build_tokenizer("bpe", text[:cut], 1024)
    assert bpe.tokens == len(learnt.encode(text)) and bpe.trained_on == "first 90%"
    assert bpe.held_out_tokens_per_char == pytest.approx(len(learnt.encode(held_out)) / len(held_out))
    assert char.tokens == len(text) and char.vocab_size == len(set(text)) and char.split_share == 0
    # what a Korean learner should see: gpt2 is barely better than bytes, a BPE learnt on the text far better
    assert gpt2.tokens_per_char > 0.8 * byte.tokens_per_char
    assert bpe.held_out_tokens_per_char < gpt2.held_out_tokens_per_char / 2.5


def _valid(b: bytes) -> bool:
    """Valid UTF-8 on its own: decoding with replacement characters changes nothing."""
    return b.decode("utf-8", errors="replace").encode("utf-8") == b


def test_split_point_agrees_with_the_builder_on_korean(tmp_path):
    text = KOREAN.read_text(encoding="utf-8")[:100_000]
    (tmp_path / "k.txt").write_text(text, encoding="utf-8")
    data = text.encode()
    cut = data.index(b"\n", int(len(data) * 0.9)) + 1  # found independently: 90% of the bytes, past the next newline
    ds = build_dataset(list_inputs([str(tmp_path / "k.txt")]), tmp_path / "d", "byte")
    assert ds.meta["inputs"][0]["train_bytes"] == cut == len(ds.train)
    assert split_point(text, 0.1) == len(data[:cut].decode())
