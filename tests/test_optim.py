"""Muon: the Newton–Schulz orthogonalisation, and Muon training for real on tinyshakespeare."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptkit import checkpoint
from gptkit.config import resolve_config
from gptkit.model import GPT
from gptkit.optim import Muon, make_optimizer, orthogonalize
from gptkit.train import train
from tests.conftest import SHAKESPEARE, reference_losses


def test_orthogonalize_sets_every_singular_value_near_one():
    torch.manual_seed(0)
    for shape in [(64, 64), (128, 32), (32, 128), (3, 48, 48)]:
        u, _, vh = torch.linalg.svd(torch.randn(shape), full_matrices=False)
        spectrum = torch.logspace(-1, 1, min(shape[-2:]))  # singular values spread 100x
        g = u @ torch.diag_embed(spectrum) @ vh
        s = torch.linalg.svdvals(orthogonalize(g))
        assert s.min() > 0.6 and s.max() < 1.25, (shape, s.min(), s.max())  # squeezed to ~1 in 5 steps
        # and the singular vectors are kept: orthogonalize(g) ≈ U·Vᵀ
        cos = torch.nn.functional.cosine_similarity(orthogonalize(g).flatten(-2), (u @ vh).flatten(-2), dim=-1)
        assert (cos > 0.97).all(), cos


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    mc, tc = resolve_config("tiny", None, {"vocab_size": None, "optimizer": "muon", "n_layer": 2})
    model = GPT(type(mc)(**{**mc.__dict__, "vocab_size": 65}))
    opt = make_optimizer(model, tc, torch.device("cpu"))
    assert isinstance(opt, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    adam = {names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert "transformer.wte.weight" in adam and "transformer.h.0.ln_1.weight" in adam and not muon & adam
    assert len(muon) + len(adam) == len(list(model.parameters()))


def test_muon_trains_and_its_state_round_trips(tmp_path):
    mc, tc = resolve_config("tiny", None, dict(n_layer=2, n_head=2, n_embd=64, block_size=32, batch_size=8,
                                               max_iters=60, eval_interval=60, eval_iters=10, warmup_iters=10,
                                               learning_rate=3e-3, optimizer="muon"))
    result = train(mc, tc, str(SHAKESPEARE), tmp_path / "m", tmp_path)
    # it learned more than which characters are frequent: below the unigram of the same split (3.35);
    # that attention is used is shown for AdamW (test_train_engine.py), at a budget Muon's test cannot afford
    ref = reference_losses(tmp_path / "m" / "data")
    assert result.val_loss < ref["unigram"] - 0.5, (result.val_loss, ref)
    # and it does what it is there for: at the same steps, tokens and data, lower than AdamW gets
    adamw = train(mc, dataclasses.replace(tc, optimizer="adamw"), str(tmp_path / "m" / "data"), tmp_path / "a",
                  tmp_path)
    assert result.val_loss < adamw.val_loss - 0.1, (result.val_loss, adamw.val_loss)  # the gap is about 0.2
    info = checkpoint.read_info(tmp_path / "m" / checkpoint.LAST)
    assert info.meta["train_config"]["optimizer"] == "muon"
    assert "optim.transformer.h.0.mlp.c_fc.weight.momentum_buffer" in info.tensors
    assert "optim.transformer.wte.weight.exp_avg_sq" in info.tensors


def test_muon_allocates_its_momentum_once(monkeypatch):
    """`setdefault("momentum_buffer", torch.zeros_like(p))` built and filled a new buffer for every
    matrix at every step, only to throw it away."""
    mc, tc = resolve_config("tiny", None, {"optimizer": "muon", "n_layer": 2})
    model = GPT(type(mc)(**{**mc.__dict__, "vocab_size": 65}))
    opt = make_optimizer(model, tc, torch.device("cpu"))
    x = torch.randint(0, 65, (2, 16))
    for step in range(2):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        if step == 0:
            monkeypatch.setattr(torch, "zeros_like", lambda *a, **k: pytest.fail("a buffer allocated again"))
