"""Reading training text: validation of bad files, the built-in corpus, downloads."""

from __future__ import annotations

import socket

import pytest

from gptkit.data.sources import DataSpec, builtin_corpus, download, open_inputs, read_text
from gptkit.errors import InputError
from tests.conftest import seed_builtin_corpus


def test_reads_korean_exactly(korean_text):
    from tests.conftest import KOREAN

    assert read_text(KOREAN) == korean_text


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"  \n\t \n", "empty"),
    (b"\x00\x01\x02binary\x00", "binary"),
    ("좋은 아침".encode() + b"\xff\xfe rest", "byte offset 13"),
])
def test_bad_files_get_one_clear_error(tmp_path, content, needle):
    f = tmp_path / "f.txt"
    f.write_bytes(content)
    with pytest.raises(InputError, match=needle):
        read_text(f)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="directory") as err:
        read_text(tmp_path)
    assert "dataset folder" not in str(err.value)  # those are train's alone, which checks for them first


def test_cp949_text_is_rejected_with_a_hint(tmp_path):
    f = tmp_path / "k.txt"
    f.write_bytes("안녕하세요".encode("cp949"))
    with pytest.raises(InputError, match="iconv"):
        read_text(f)


def test_builtin_corpus_is_real_text_and_cached(tmp_path):
    p = builtin_corpus(tmp_path)
    text = p.read_text(encoding="utf-8")
    assert len(text) > 500_000
    assert "Return" in text and "\n\n" in text
    mtime = p.stat().st_mtime_ns
    assert builtin_corpus(tmp_path) == p and p.stat().st_mtime_ns == mtime  # built once
    store = tmp_path / "store"
    seed_builtin_corpus(p, store)  # the store's cache, as a first `gptkit train` leaves it
    with open_inputs(DataSpec(), store / ".cache") as inputs:  # no input: the built-in corpus, from that cache
        assert [(i.name, i.path) for i in inputs] == [("builtin", store / ".cache" / "corpus" / p.name)]


def test_download_offline_is_one_clear_error(tmp_path):
    with socket.socket() as s:  # a port on this machine with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match="cannot download"):
        download(f"http://127.0.0.1:{port}/input.txt", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_the_first_mib_cut_inside_a_character_is_not_called_invalid(tmp_path):
    """`gptkit train` looks at a file's first MiB before importing torch; the cut may split a syllable."""
    from gptkit.cli.train_cmd import check_data_arg
    from gptkit.data.chunks import decode_utf8

    data = "가".encode() * ((1 << 20) // 3 + 10)  # 1 MiB is not a whole number of 3-byte syllables
    assert decode_utf8(data[:1 << 20], "'f'", cut=True) == "가" * ((1 << 20) // 3)
    with pytest.raises(InputError, match=f"byte offset {(1 << 20) - 1}"):
        decode_utf8(data[:1 << 20], "'f'")  # the whole of a file: a cut character is invalid
    f = tmp_path / "big.txt"
    f.write_bytes(data)
    check_data_arg([str(f)])
    f.write_bytes(data[:300] + b"\xff" + data[300:])
    with pytest.raises(InputError, match="bad byte 0xff at byte offset 300"):
        check_data_arg([str(f)])
