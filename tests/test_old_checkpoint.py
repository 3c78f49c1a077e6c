"""A checkpoint written by an earlier gptkit (format 1, tests/data/checkpoint-v1: 1 layer, 16 wide,
char tokenizer, 400 steps on tinyshakespeare) still samples its recorded greedy text, gives its
recorded logits, inspects, resumes and converts. Every later format must keep reading it; a gptkit
that stops reading format 1 must refuse it in one line naming the version, and change this file to
assert that refusal instead."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gptkit import checkpoint
from gptkit.config import resolve_config
from gptkit.hf.convert import convert
from gptkit.train import train
from tests.conftest import DATA, SHAKESPEARE, run_here

OLD = DATA / "checkpoint-v1" / "last.safetensors"
EXPECTED = json.loads((DATA / "checkpoint-v1" / "expected.json").read_text(encoding="utf-8"))


def test_it_is_format_1_and_gives_its_recorded_logits():
    info = checkpoint.read_info(OLD)
    assert info.meta["format_version"] == EXPECTED["format_version"] == 1
    model, tok, _ = checkpoint.load_for_inference(OLD)
    with torch.no_grad():
        logits = model(torch.tensor([tok.encode(EXPECTED["logits_prompt"])]))[0][0].double()
    assert list(logits.shape) == EXPECTED["logits_shape"]
    assert logits.argmax(-1).tolist() == EXPECTED["logits_argmax"]
    assert logits.sum().item() == pytest.approx(EXPECTED["logits_sum"], rel=1e-5, abs=1e-3)
    assert logits.abs().sum().item() == pytest.approx(EXPECTED["logits_abs_sum"], rel=1e-5)


def test_it_samples_its_recorded_greedy_text(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = run_here(capsys, "sample", "-c", str(OLD), "-p", EXPECTED["greedy_prompt"], "-n",
                    str(EXPECTED["greedy_tokens"]), "--temperature", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["token_ids"] == EXPECTED["greedy_ids"] and out["text"] == EXPECTED["greedy_text"]


def test_it_inspects(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = run_here(capsys, "inspect", str(OLD), "-p", "ROMEO:", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)  # a summary of the old run, as for a new one


def test_it_resumes_and_converts(tmp_path):
    run = tmp_path / "store" / "v1"
    run.mkdir(parents=True)
    shutil.copy(OLD, run / checkpoint.LAST)
    mc, tc = resolve_config(None, None, dict(max_iters=EXPECTED["step"] + 3))
    result = train(mc, tc, str(SHAKESPEARE), run, tmp_path / "store", resume=True, explicit={"max_iters"})
    assert result.step == EXPECTED["step"] + 3
    saved = checkpoint.read_info(run / checkpoint.LAST)
    assert saved.meta["model_config"] == checkpoint.read_info(OLD).meta["model_config"]
    assert saved.meta["format_version"] == checkpoint.FORMAT_VERSION
    hf = convert(OLD, tmp_path / "hf")
    back = convert(hf.dst, tmp_path / "back.safetensors")
    old = checkpoint.load_tensors(checkpoint.read_info(OLD), "model.")
    new = checkpoint.load_tensors(checkpoint.read_info(back.dst), "model.")
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
