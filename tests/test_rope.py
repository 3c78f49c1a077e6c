"""Rotary positions (the CPU default, `quick`) checked by what defines them and against GPT-J's
rotary in transformers, not only against themselves: a wrong but consistent rotation (a flipped
sign, swapped halves, another base) passes cache-vs-full and compiled-vs-eager checks alike."""

from __future__ import annotations

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.model import GPT, apply_rope, rope_tables

HS, T = 16, 40


def rotated(x: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """x (N, HS), each row turned as if it sat at its position."""
    cos, sin = rope_tables(HS, max(positions) + 1)
    pos = torch.tensor(positions)
    return apply_rope(x[None, None], cos[pos], sin[pos])[0, 0]


def test_a_score_depends_only_on_the_distance_and_norms_are_kept():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, HS, generator=g, dtype=torch.float64), torch.randn(1, HS, generator=g, dtype=torch.float64)
    q, k = q.float(), k.float()
    for i, j in [(0, 0), (5, 2), (2, 5), (17, 3), (30, 29)]:
        base = (rotated(q, [i]) * rotated(k, [j])).sum()
        for s in (1, 7, 100):
            shifted = (rotated(q, [i + s]) * rotated(k, [j + s])).sum()
            assert shifted == pytest.approx(base.item(), abs=1e-4), (i, j, s)
    x = torch.randn(T, HS, generator=g)
    assert torch.allclose(rotated(x, list(range(T))).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(rotated(x, [0] * T), x)  # position 0 turns by no angle
    # and it is a position code: the score does change with the distance
    near, far = ((rotated(q, [d]) * rotated(q, [0])).sum() for d in (1, 9))
    assert not torch.isclose(near, far)


def test_rotation_equals_gpt_j_in_transformers():
    """GPT-J rotates interleaved pairs (x[0::2], x[1::2]), as gptkit does; its tables and its rotation
    applied to (B, T, nh, hs) give ours, to float precision."""
    gptj = pytest.importorskip("transformers.models.gptj.modeling_gptj")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, T, 3, HS, generator=g)  # GPT-J's layout: (B, T, nh, hs)
    sincos = gptj.create_sinusoidal_positions(T, HS)[torch.arange(T)][None]  # (1, T, hs)
    sin, cos = torch.split(sincos, HS // 2, dim=-1)
    theirs = gptj.apply_rotary_pos_emb(x, sin, cos)
    my_cos, my_sin = rope_tables(HS, T)
    assert torch.allclose(my_cos, cos[0], atol=1e-6) and torch.allclose(my_sin, sin[0], atol=1e-6)
    mine = apply_rope(x.transpose(1, 2), my_cos, my_sin).transpose(1, 2)  # ours on (B, nh, T, hs)
    assert torch.allclose(mine, theirs, atol=1e-5), (mine - theirs).abs().max()


def test_the_model_turns_queries_and_keys_by_gpt_j_rotary():
    """Inside a RoPE model: a block's queries and keys are its unrotated projections turned by GPT-J's
    rotary at their positions (values untouched), with the model's own tables."""
    gptj = pytest.importorskip("transformers.models.gptj.modeling_gptj")
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=2 * HS, block_size=T, vocab_size=65, pos_encoding="rope")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    attn = model.transformer.h[0].attn
    x = torch.randn(1, T, cfg.n_embd)
    _, rope = model.embed(torch.zeros(1, T, dtype=torch.long), None)
    q, k, v = attn.heads(x, rope)
    q0, k0, v0 = attn.heads(x, None)
    sincos = gptj.create_sinusoidal_positions(T, HS)[None]
    sin, cos = torch.split(sincos, HS // 2, dim=-1)
    for turned, plain in ((q, q0), (k, k0)):
        ref = gptj.apply_rotary_pos_emb(plain.transpose(1, 2), sin, cos).transpose(1, 2)
        assert torch.allclose(turned, ref, atol=1e-5), (turned - ref).abs().max()
    assert torch.equal(v, v0)
