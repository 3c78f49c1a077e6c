"""The transformer itself: causality, SDPA vs the textbook path, KV cache, init, architecture switches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptkit.config import ModelConfig
from gptkit.introspect.trace import run_blocks
from gptkit.model import GPT, KVCache, manual_attention

SWITCHES = [dict(), dict(pos_encoding="rope"), dict(norm="rmsnorm"), dict(mlp="swiglu"),
            dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False)]


def small(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=50, **kw)
    return GPT(cfg).eval()


@pytest.mark.parametrize("kw", SWITCHES)
def test_causality_future_tokens_do_not_change_earlier_logits(kw):
    model = small(**kw)
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 50, (2, 8))
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :12], b[:, :12]) or torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])  # and the later ones do change


@pytest.mark.parametrize("kw", SWITCHES)
def test_sdpa_and_manual_attention_agree(kw):
    """The model's fused SDPA path and the textbook masked softmax that `introspect` runs give the
    same residual stream after every block."""
    model = small(**kw)
    idx = torch.randint(0, 50, (3, 24))
    with torch.no_grad():
        for (_, _, slow, _), (_, _, fast, _) in zip(run_blocks(model, idx), run_blocks(model, idx, with_weights=False),
                                                     strict=True):
            assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


def test_manual_attention_weights_are_causal_and_normalised():
    q, k, v = torch.randn(3, 1, 2, 7, 8).unbind(0)
    _, w = manual_attention(q, k, v)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, 7))
    assert torch.all(w.triu(diagonal=1) == 0)


@pytest.mark.parametrize("kw", SWITCHES)
def test_kv_cache_prefill_and_decode_equal_full_forward(kw):
    model = small(**kw)
    idx = torch.randint(0, 50, (2, 24))
    full, _ = model(idx)
    cache = KVCache(model.config, batch_size=2)
    pre, _ = model(idx[:, :10], kv_cache=cache, input_pos=torch.arange(10))
    steps = [pre]
    for t in range(10, 24):
        logits, _ = model(idx[:, t:t + 1], kv_cache=cache, input_pos=torch.tensor([t]))
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # a chunk appended to a filled cache sees the keys before it and its own, causally
    model(idx[:, :8], kv_cache=cache, input_pos=torch.arange(8))
    chunk, _ = model(idx[:, 8:16], kv_cache=cache, input_pos=torch.arange(8, 16))
    assert torch.allclose(chunk, full[:, 8:16], atol=1e-5)
    # positions 5..15 of the cache hold stale keys now: starting again at 0 must not see them
    restart, _ = model(idx[:, :5], kv_cache=cache, input_pos=torch.arange(5))
    assert torch.allclose(restart, full[:, :5], atol=1e-5)


def test_gpt2_init_and_weight_tying():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=8, n_head=4, n_embd=256, block_size=32, vocab_size=300)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_params() == sum(v.numel() for k, v in model.state_dict().items() if k != "lm_head.weight")
    proj = model.transformer.h[0].mlp.c_proj.weight
    fc = model.transformer.h[0].mlp.c_fc.weight
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * 8)) < 0.001
    assert abs(fc.std().item() - 0.02) < 0.001
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)


def test_loss_at_init_is_about_ln_vocab():
    model = small()
    idx, targets = torch.randint(0, 50, (2, 8, 24)).unbind(0)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(50)) < 0.2


def test_vocabulary_is_padded_inside_the_model_only():
    """The token matrices get rows up to a multiple of 64 (aligned logits GEMMs); the logits, the state
    dict and a checkpoint show the real vocabulary, and the padding never changes a logit."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65)
    model = GPT(cfg)
    assert model.transformer.wte.weight.shape == (128, 32) and model.lm_head.weight.shape == (128, 32)
    assert torch.count_nonzero(model.transformer.wte.weight[65:]) == 0
    sd = model.state_dict()
    assert sd["transformer.wte.weight"].shape == sd["lm_head.weight"].shape == (65, 32)
    idx = torch.randint(0, 65, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, 65)
    # the reference: the same weights without padding rows, written out
    x = model.transformer.ln_f(model.transformer.h[1](model.transformer.h[0](model.embed(idx)[0])))
    assert torch.allclose(logits, x @ sd["transformer.wte.weight"].T, atol=1e-5)
    assert torch.allclose(loss, F.cross_entropy((x @ sd["transformer.wte.weight"].T).view(-1, 65), idx.view(-1)))
    loss.backward()
    assert torch.count_nonzero(model.transformer.wte.weight.grad[65:]) == 0  # the padding learns nothing
    again = GPT(cfg)
    again.load_state_dict(sd, strict=False)  # strict=False: lm_head is tied to wte
    assert torch.equal(again(idx)[0], model(idx)[0])
    assert torch.count_nonzero(again.transformer.wte.weight[65:]) == 0
    with torch.no_grad():
        model.transformer.wte.weight[65:] = 5.0  # whatever the padding rows hold, no logit sees them
    assert torch.equal(model(idx)[0], again(idx)[0])
    assert model.num_params() == again.num_params() == sum(v.numel() for k, v in sd.items() if k != "lm_head.weight")
