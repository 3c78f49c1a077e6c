"""Bad input that is about storage, across all commands: damaged checkpoints, places that cannot be
written, and a full disk. One `error:` line naming the fix, a documented exit code, no traceback, and
no file changed (a checkpoint that was there before is there byte for byte). The rest of docs/errors.md's
table, and the helpers both files use, are in test_hardening.py.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tracemalloc

import pytest
import torch

from gptkit import checkpoint
from gptkit.errors import CheckpointError
from tests.conftest import assert_one_line_error, disk_full_after
from tests.test_hardening import CKPT, INPUT, RUN, USAGE, make_work, refused, snapshot
from tests.test_properties import with_header


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """test_hardening.py's folder, plus damaged copies of its checkpoint as store/bad-KIND runs."""
    root = make_work(tmp_path_factory.mktemp("hardening-storage"))
    for kind, data in damaged_checkpoints((root / "store" / "run" / checkpoint.LAST).read_bytes()).items():
        (root / "store" / f"bad-{kind}").mkdir()
        (root / "store" / f"bad-{kind}" / checkpoint.LAST).write_bytes(data)
    oversized = root / "store" / "bad-oversized" / checkpoint.LAST
    oversized.parent.mkdir()
    with open(oversized, "wb") as f:  # declares a header just over the limit; sparse, so it costs no disk
        f.write(struct.pack("<Q", checkpoint.MAX_HEADER_BYTES + 8))
        f.truncate(checkpoint.MAX_HEADER_BYTES + 24)
    return root


def damaged_checkpoints(data: bytes) -> dict[str, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])

    def rewritten(edit) -> bytes:
        h = json.loads(json.dumps(header))
        edit(h)
        return with_header(data, h)

    def beyond(h):
        name = next(k for k in h if k.startswith("model."))
        h[name]["data_offsets"] = [len(data), len(data) + 64]

    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buf)  # what `torch.save` writes today: a zip holding a pickle
    return {
        "truncated": data[:len(data) // 2],
        "header": data[:8] + b"\xff\xfe" + data[10:],
        "beyond": rewritten(beyond),
        "newer": rewritten(lambda h: h["__metadata__"].update(format_version="99")),
        "nometa": rewritten(lambda h: h["__metadata__"].pop("tokenizer")),
        "pickle": pickle.dumps({"weight": [0.0] * 16}),  # written here, never loaded
        "torchsave": buf.getvalue(),
    }


DAMAGE = {"truncated": "truncated", "header": "corrupted", "beyond": "beyond the file's end",
          "newer": "upgrade gptkit", "nometa": "lacks metadata tokenizer", "pickle": "not a valid safetensors",
          "torchsave": "not a valid safetensors", "oversized": "header"}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoints(work, capsys, monkeypatch, kind):
    monkeypatch.chdir(work)
    path = f"store/bad-{kind}/{checkpoint.LAST}"
    for args in (["sample", "-c", path, "-p", "a"], ["inspect", path], ["convert", path, "out"],
                 ["tokenize", "--checkpoint", path, "hello"],
                 ["train", "tiny.txt", "--checkpoints", "store", "--init-from", path],
                 ["train", "--checkpoints", "store", "--run", f"bad-{kind}", "--resume"]):
        refused(capsys, work, args, CKPT, DAMAGE[kind])


def test_oversized_header_is_refused_before_reading_it(work):
    path = work / "store" / "bad-oversized" / checkpoint.LAST
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    assert n > checkpoint.MAX_HEADER_BYTES and n + 8 <= path.stat().st_size  # only the limit can refuse it
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="header"):
            checkpoint.read_info(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused from its first 8 bytes: the 64 MiB header was never read


def test_directory_as_an_output_file(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    refused(capsys, work, ["tokenize", "hello", "--save-tokenizer", "adir"], USAGE, "adir", "directory",
            "--save-tokenizer")
    # checked before any work: nothing of the view is printed
    refused(capsys, work, ["inspect", RUN, "--save", "adir/x/view.svg"], USAGE, "cannot write", "--save")


def test_tokenizer_file_is_checked_before_a_bpe_is_trained(work, capsys, monkeypatch):
    """An unwritable --save-tokenizer used to fail only after the whole bpe training."""
    import gptkit.data.build
    import gptkit.tokenizers.bpe

    def trained(*args, **kwargs):
        raise AssertionError("the bpe was trained before --save-tokenizer was checked")

    monkeypatch.chdir(work)
    monkeypatch.setattr(gptkit.tokenizers.bpe, "train_bpe_from_chunks", trained)
    monkeypatch.setattr(gptkit.data.build, "train_bpe_from_chunks", trained)
    for args in (["tokenize", "--count", "--file", "tiny.txt", "-t", "bpe"],
                 ["tokenize", "tiny.txt", "--out", "ds-bpe", "-t", "bpe"]):
        refused(capsys, work, [*args, "--save-tokenizer", "no/such/folder/tok.json"], USAGE,
                "cannot write", "no/such/folder/tok.json", "--save-tokenizer")


def drop_root_override() -> None:
    """In the child: give up root's power to write anywhere (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH),
    so a read-only folder is read-only for it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(99)


def test_unwritable_checkpoint_folder(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    # a path through a regular file can never be created
    refused(capsys, work, ["train", "tiny.txt", "--checkpoints", "blocker/store"], CKPT,
            "cannot write to checkpoint folder", "--store")
    refused(capsys, work, ["train", f"{RUN}/data", "--checkpoints", "blocker/store"], CKPT,
            "cannot write to checkpoint folder")
    refused(capsys, work, ["convert", RUN, "blocker/hf"], CKPT, "cannot create folder", "DST")
    refused(capsys, work, ["tokenize", "tiny.txt", "--out", "blocker/ds"], INPUT, "cannot create dataset folder")
    # a read-only folder, also for root (the child drops root's override of file permissions)
    ro = work / "readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    before = snapshot(work)
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "gptkit", "train", "tiny.txt", "--checkpoints", "readonly", "-q"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=drop_root_override if os.geteuid() == 0 else None)
    if proc.returncode == 99:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
    assert_one_line_error(proc, "cannot write to checkpoint folder", "readonly", "Permission denied")
    assert proc.returncode == CKPT and snapshot(work) == before


def test_full_disk(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    shutil.copytree(work / RUN, work / "store" / "full")
    ckpts = {n: (work / "store" / "full" / n).read_bytes() for n in (checkpoint.LAST, checkpoint.BEST)}
    limit = 8192  # room for metrics.jsonl, not for a checkpoint, a dataset or a converted model
    assert (work / "store" / "full" / "metrics.jsonl").stat().st_size < limit // 2 < min(map(len, ckpts.values()))
    with disk_full_after(limit):
        refused(capsys, work, ["train", "--checkpoints", "store", "--run", "full", "--resume", "--max-iters", "6",
                               "-q"], CKPT, "cannot write checkpoint", "unchanged", "free space", unchanged=False)
        refused(capsys, work, ["tokenize", "tiny.txt", "--out", "ds"], INPUT, "cannot write dataset folder",
                "free space")
        refused(capsys, work, ["convert", RUN, "hf"], CKPT, "cannot write", "free space")
    for name, data in ckpts.items():  # the run's checkpoints are the ones from before, byte for byte
        assert (work / "store" / "full" / name).read_bytes() == data
    assert not list((work / "store" / "full").glob(".*tmp*")) and not (work / "ds").exists()
    assert not (work / "hf").exists()
    shutil.rmtree(work / "store" / "full")
