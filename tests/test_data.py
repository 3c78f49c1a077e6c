"""Token datasets: the last-10% split, the cached arrays, batches."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from gptkit.data.build import prepare_dataset
from gptkit.data.dataset import check_lengths, get_batch, load_dataset, split_point
from gptkit.data.sources import InputFile, list_inputs
from gptkit.errors import InputError

_n = itertools.count()


@pytest.fixture
def source_of(tmp_path_factory):
    """A text as the one input of a dataset: written to a file of its own (the same text, the same file)."""
    folder = tmp_path_factory.mktemp("texts")
    made: dict[str, Path] = {}

    def make(text: str) -> list[InputFile]:
        if text not in made:
            made[text] = folder / f"text-{next(_n)}.txt"
            made[text].write_text(text, encoding="utf-8")
        return list_inputs([str(made[text])])

    return make


def test_validation_is_the_last_tenth_cut_at_a_line(shakespeare_text):
    cut = split_point(shakespeare_text, 0.1)
    assert shakespeare_text[cut - 1] == "\n"
    assert 0.89 < cut / len(shakespeare_text) < 0.91


def test_char_dataset_round_trips_and_is_cached(tmp_path, shakespeare_text, source_of):
    ds = prepare_dataset(source_of(shakespeare_text), "char", None, 0.1, tmp_path / "d")
    assert ds.train.dtype == np.uint16 and ds.meta["tokenizer"]["kind"] == "char"
    tok = ds.tokenizer
    cut = split_point(shakespeare_text, 0.1)
    assert tok.decode(ds.val.tolist()) == shakespeare_text[cut:]
    assert tok.decode(ds.train[:1000].tolist()) == shakespeare_text[:1000]
    assert ds.meta["val_chars"] == len(shakespeare_text) - cut
    mtime = (tmp_path / "d" / "train.bin").stat().st_mtime_ns
    again = prepare_dataset(source_of(shakespeare_text), "char", None, 0.1, tmp_path / "d")
    assert (tmp_path / "d" / "train.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert np.array_equal(again.train, ds.train)
    other = prepare_dataset(source_of(shakespeare_text), "byte", None, 0.1, tmp_path / "d")
    assert other.meta["tokenizer"]["kind"] == "byte"  # a different tokenizer rebuilds


def test_korean_bpe_dataset_decodes_exactly(tmp_path, korean_text, source_of):
    text = korean_text[:300_000]
    ds = prepare_dataset(source_of(text), "bpe", 512, 0.1, tmp_path / "k")
    tok = load_dataset(tmp_path / "k").tokenizer
    assert tok.decode(ds.train.tolist()) + tok.decode(ds.val.tolist()) == text
    assert ds.meta["val_tokens"] / ds.meta["val_chars"] < 1.5  # BPE merges most Hangul syllables


def test_batches_are_shifted_windows(tmp_path, shakespeare_text, source_of):
    ds = prepare_dataset(source_of(shakespeare_text), "char", None, 0.1, tmp_path / "d")
    x, y = get_batch(ds.train, 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    # two shards of a global batch are exactly its halves
    full, _ = get_batch(ds.train, 4, 16, np.random.default_rng(1), (0, 1))
    a, _ = get_batch(ds.train, 2, 16, np.random.default_rng(1), (0, 2))
    b, _ = get_batch(ds.train, 2, 16, np.random.default_rng(1), (1, 2))
    assert np.array_equal(np.concatenate([a, b]), full)


def test_too_short_text_is_a_clear_error(tmp_path, source_of):
    ds = prepare_dataset(source_of("hello world\n" * 10), "char", None, 0.1, tmp_path / "s")
    with pytest.raises(InputError, match="block-size"):
        check_lengths(ds, 64)


def test_damaged_dataset_folder(tmp_path, shakespeare_text, source_of):
    prepare_dataset(source_of(shakespeare_text[:5000]), "char", None, 0.1, tmp_path / "d")
    (tmp_path / "d" / "val.bin").write_bytes(b"\x00\x01")
    with pytest.raises(InputError, match="rebuild"):
        load_dataset(tmp_path / "d")
    with pytest.raises(InputError, match="not a dataset folder"):
        load_dataset(tmp_path)
