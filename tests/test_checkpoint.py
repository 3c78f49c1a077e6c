"""The safetensors store: bit-identical round trips, atomic writes, and damaged files."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from gptkit import checkpoint
from gptkit.errors import CheckpointError
from gptkit.tokenizers.stored import tokenizer_from_dict
from tests.conftest import disk_full_after, recorded_eval


def test_load_gives_the_trained_weights_and_ties_them(trained_run):
    """The loaded model reproduces the held-out loss the training process measured on its own weights
    (same batches, same precision): a load that dropped, reordered or re-initialised a tensor cannot."""
    run = trained_run["run_dir"]
    model, tok, info = checkpoint.load_for_inference(run / checkpoint.LAST)
    recorded, measured = recorded_eval(model, run)
    assert measured == pytest.approx(recorded, abs=1e-5)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert "model.lm_head.weight" not in info.tensors  # the tied matrix is stored once
    assert tok.kind == "char" and tok.vocab_size == 65


def test_save_then_load_exact(tmp_path, trained_run):
    model, _, info = checkpoint.load_for_inference(trained_run["run_dir"] / checkpoint.LAST)
    out = checkpoint.save(tmp_path / "copy.safetensors", model, {k: info.meta[k] for k in ("model_config", "tokenizer")})
    copy, _, _ = checkpoint.load_for_inference(out)
    x = torch.randint(0, 65, (2, 32))
    assert torch.equal(model(x)[0], copy(x)[0])


def test_metadata_rebuilds_the_tokenizer_offline(trained_run, shakespeare_text):
    info = checkpoint.read_info(trained_run["run_dir"] / checkpoint.LAST)
    tok = tokenizer_from_dict(info.meta["tokenizer"])
    sample = shakespeare_text[:2000]
    assert tok.decode(tok.encode(sample)) == sample
    st = info.state
    assert st["step"] == 400 and st["val_loss"] > 0 and "numpy" in st["rng"]
    assert info.meta["train_config"]["max_iters"] == 400
    assert any(k.startswith("optim.") and k.endswith(".exp_avg") for k in info.tensors)


def test_resolve_run_names_and_newest(trained_run):
    store = trained_run["store"]
    assert checkpoint.resolve("shakespeare", store) == trained_run["run_dir"] / checkpoint.BEST
    with pytest.raises(CheckpointError, match="shakespeare"):  # the error lists what exists
        checkpoint.resolve("nope", store)


def test_no_run_named_means_the_newest_of_several(tmp_path):
    """Three runs with set times: the newest checkpoint wins, whichever of a run's two files it is,
    and a folder without a checkpoint is not a run."""
    import os

    for i, name in enumerate(["b-old", "a-mid", "c-new"]):
        (tmp_path / name).mkdir()
        for f in (checkpoint.LAST, checkpoint.BEST):
            (tmp_path / name / f).write_bytes(b"")
            os.utime(tmp_path / name / f, (1_000_000 + 100 * i, 1_000_000 + 100 * i))
    (tmp_path / "z-empty").mkdir()
    assert checkpoint.resolve(None, tmp_path) == tmp_path / "c-new" / checkpoint.BEST
    os.utime(tmp_path / "b-old" / checkpoint.BEST, (2_000_000, 2_000_000))  # improved again, newer than c-new
    assert checkpoint.resolve(None, tmp_path).parent == tmp_path / "b-old"


def test_failed_write_leaves_the_old_checkpoint(tmp_path, trained_run):
    model, _, info = checkpoint.load_for_inference(trained_run["run_dir"] / checkpoint.LAST)
    meta = {k: info.meta[k] for k in ("model_config", "tokenizer")}
    target = checkpoint.save(tmp_path / "last.safetensors", model, meta)
    before = target.read_bytes()
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    # a real failing write (the kernel's EFBIG past the size limit), as safetensors meets a full disk
    with disk_full_after(len(before) // 2), pytest.raises(CheckpointError, match="unchanged"):
        checkpoint.save(target, model, meta)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left


def _header_bytes(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data, n


@pytest.mark.parametrize("damage,needle", [
    ("truncate", "truncated"),
    ("header", "corrupted"),
    ("pickle", "not a valid safetensors"),
    ("newer", "newer"),
    ("nometa", "lacks metadata"),
    ("empty", "too short"),
    ("huge", "unusable model_config"),  # 10^9 layers: refused before anything is built
    ("hugerope", "rotary tables"),  # a rotary table of 10^9 positions would need ~128 GB
])
def test_damaged_checkpoints_raise_one_clear_error(tmp_path, trained_run, damage, needle):
    src = trained_run["run_dir"] / checkpoint.BEST
    data, n = _header_bytes(src)
    bad = tmp_path / "bad.safetensors"
    header = json.loads(data[8:8 + n])
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "header":
        bad.write_bytes(data[:8] + b"\xff\xfe" + data[10:])
    elif damage == "pickle":
        bad.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle stream's opening bytes
    elif damage in ("newer", "nometa", "huge", "hugerope"):
        meta = header["__metadata__"]
        if damage == "newer":
            meta["format_version"] = "99"
        elif damage == "nometa":
            del meta["tokenizer"]
        else:
            cfg = json.loads(meta["model_config"])
            cfg.update(n_layer=10**9) if damage == "huge" else cfg.update(block_size=10**9, pos_encoding="rope")
            meta["model_config"] = json.dumps(cfg)
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        bad.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    elif damage == "empty":
        bad.write_bytes(b"")
    with pytest.raises(CheckpointError, match=needle):
        model, _, _ = checkpoint.load_for_inference(bad)
