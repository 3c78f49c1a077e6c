"""The transformer itself: causality, SDPA vs the textbook path, KV cache, init, architecture switches."""

from __future__ import annotations

import math
import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from gptkit import linear
from gptkit.config import ModelConfig
from gptkit.linear import DECODE_ROWS, Linear, SplitWeight, column_major, decode_layout
from gptkit.model import GPT, KVCache, manual_attention
from tests.conftest import torch_threads

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
    model = small(**kw)
    idx = torch.randint(0, 50, (3, 24))
    fast, _ = model(idx)
    model.set_manual_attention(True)
    slow, _ = model(idx)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


def test_manual_attention_weights_are_causal_and_normalised():
    q, k, v = torch.randn(3, 1, 2, 7, 8).unbind(0)
    _, w = manual_attention(q, k, v)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, 7))
    assert torch.all(w.triu(diagonal=1) == 0)


def test_textbook_attention_example():
    """softmax(X·Xᵀ)·X with identity projections, no scaling, no mask (the classic 6-token example)."""
    x = torch.tensor([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                      [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])
    ctx, _ = manual_attention(x, x, x, scale=1.0, causal=False)
    assert torch.allclose(ctx[0], torch.tensor([0.4421, 0.5931, 0.5790]), atol=1e-4)
    assert torch.allclose(ctx[-1], torch.tensor([0.4177, 0.6503, 0.5645]), atol=1e-4)


@pytest.mark.parametrize("kw", SWITCHES)
def test_kv_cache_prefill_and_decode_equal_full_forward(kw):
    model = small(**kw)
    idx = torch.randint(0, 50, (2, 24))
    full, _ = model(idx)
    cache = KVCache(model.config, batch_size=2)
    pre, _ = model(idx[:, :10], kv_cache=cache)
    steps = [pre]
    for t in range(10, 24):
        logits, _ = model(idx[:, t:t + 1], kv_cache=cache)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # a chunk appended to a filled cache uses the shifted causal mask
    cache.reset()
    model(idx[:, :8], kv_cache=cache)
    chunk, _ = model(idx[:, 8:16], kv_cache=cache)
    assert torch.allclose(chunk, full[:, 8:16], atol=1e-5)


def test_gpt2_init_and_weight_tying():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=8, n_head=4, n_embd=256, block_size=32, vocab_size=300)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_params() == sum(p.numel() for p in model.parameters())
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


@pytest.fixture
def split_small(monkeypatch):
    """Split every weight, however small (the tests' weights are under SPLIT_MIN), on any CPU (linear.SPLIT)."""
    monkeypatch.setattr(linear, "SPLIT", True)
    monkeypatch.setattr(linear, "SPLIT_MIN", 0)


@pytest.mark.parametrize("layout", ["row-major", "column-major"])
@pytest.mark.parametrize("n_out", [96, 65, 7, 1])  # even, uneven (a leftover row), narrower than parts
@pytest.mark.parametrize("rows", [1, 3, 64])
@pytest.mark.parametrize("parts", [2, 3, 8, 5])  # 5 does not divide the 48 inputs: column-major takes F.linear
def test_split_weight_equals_linear(split_small, layout, n_out, rows, parts):
    torch.manual_seed(n_out + rows)
    weight, bias, x = torch.randn(n_out, 48), torch.randn(n_out), torch.randn(rows, 1, 48)
    if layout == "column-major":
        weight = column_major(weight)
    by_input = not weight.is_contiguous()  # a (1, 48) weight is both: row-major it is
    for b in (bias, None):
        split = SplitWeight(weight, b, parts)
        assert split.by_input == (by_input and parts != 5)
        assert (split.slices is None) == (by_input and parts == 5 or not by_input and n_out < parts)
        got = split(x)
        assert got.shape == (rows, 1, n_out)
        assert torch.allclose(got, F.linear(x, weight, b), atol=1e-5, rtol=1e-5)


def test_small_weights_and_16_bit_column_major_ones_take_f_linear():
    """Under SPLIT_MIN elements a split costs more than it saves; 16-bit partial sums would each be rounded."""
    small_w, big_w = torch.randn(65, 384), column_major(torch.randn(1536, 384))
    assert SplitWeight(small_w, None, 2).slices is None
    assert SplitWeight(big_w, None, 2).by_input
    assert SplitWeight(big_w.to(torch.bfloat16), None, 2).slices is None
    x = torch.randn(1, 1, 384)
    assert torch.equal(SplitWeight(small_w, None, 2)(x), F.linear(x, small_w))


def test_linear_splits_only_small_inference_inputs_on_several_threads(split_small, monkeypatch):
    parts: list[int] = []
    real = SplitWeight.__call__
    monkeypatch.setattr(SplitWeight, "__call__", lambda self, x: parts.append(self.parts) or real(self, x))
    layer = Linear(32, 96)
    one, many = torch.randn(1, 1, 32), torch.randn(1, DECODE_ROWS + 1, 32)
    with torch_threads(2):
        with torch.no_grad():
            expected = F.linear(one, layer.weight, layer.bias)
            assert torch.allclose(layer(one), expected, atol=1e-6) and parts == [2]  # a decode step
            layer(many)  # a long prompt: one ordinary matrix product
        y = layer(one)  # training: autograd takes F.linear, and gradients flow
        y.sum().backward()
        assert layer.weight.grad is not None and parts == [2]
    with torch_threads(1), torch.no_grad():
        layer(one)
    assert parts == [2]


def test_where_blas_threads_one_row_products_nothing_is_split_or_laid_out(monkeypatch):
    """MKL on an Intel CPU threads a matrix-vector product itself and reads row-major weights fastest
    (linear.SPLIT False): decode steps are plain F.linear and decode_layout leaves the weights alone."""
    intel_mkl = torch.backends.mkl.is_available() and linear.cpu_vendor() == "GenuineIntel"
    assert linear.blas_threads_gemv() == intel_mkl and linear.SPLIT == (not intel_mkl)  # this machine's path
    if sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64"):
        assert linear.cpu_vendor() in ("GenuineIntel", "AuthenticAMD")
    monkeypatch.setattr(linear, "SPLIT", False)
    monkeypatch.setattr(linear, "SPLIT_MIN", 0)
    model = small()
    weights = {n: p.data_ptr() for n, p in model.named_parameters()}
    assert decode_layout(model) is model
    assert all(p.is_contiguous() and p.data_ptr() == weights[n] for n, p in model.named_parameters())
    idx = torch.randint(0, 50, (1, 12))
    with torch_threads(2), torch.no_grad():
        cache = KVCache(model.config, 1)
        model(idx[:, :11], kv_cache=cache)
        step = model.decode_step(idx[:, 11], cache)
        assert torch.allclose(step, model(idx)[0][:, -1], atol=1e-5)
    assert all(m._slices is None for m in model.modules() if isinstance(m, Linear))  # F.linear throughout


def test_linear_follows_its_weights_when_they_change(split_small):
    """The split views are kept between calls: they must follow weights loaded in place, a dtype change,
    a new tensor, and a new thread count."""
    layer, x = Linear(32, 96), torch.randn(1, 1, 32)
    with torch_threads(2), torch.no_grad():
        layer(x)
        layer.load_state_dict({"weight": torch.randn(96, 32), "bias": torch.randn(96)})  # copied in place
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5)
        layer.weight.data = torch.randn(96, 32)  # a new tensor
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5)
        layer.double()
        assert layer(x.double()).dtype == torch.float64
        assert torch.allclose(layer(x.double()), F.linear(x.double(), layer.weight, layer.bias))
    with torch_threads(3), torch.no_grad():
        assert torch.allclose(layer(x.double()), F.linear(x.double(), layer.weight, layer.bias))
        assert layer._slices.parts == 3
    with torch_threads(2), torch.no_grad():  # the same storage seen transposed: new views, or F.linear
        square = Linear(32, 32)
        square(x)
        square.weight.data = square.weight.data.t()
        assert not square.weight.is_contiguous()
        assert torch.allclose(square(x), F.linear(x, square.weight, square.bias), atol=1e-5)
        assert square._slices.by_input  # the storage is now column-major: split by input rows


@pytest.mark.parametrize("kw", SWITCHES)
def test_decode_layout_changes_memory_order_only(split_small, kw):
    """decode_layout stores the wide weights (Q/K/V, the FFN's expansion) column-major and nothing else
    changes: the same state dict, the tied lm_head, the same logits for a prompt and decode steps."""
    import copy

    model = small(**kw)
    laid = decode_layout(copy.deepcopy(model))
    before, after = model.state_dict(), laid.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for name, module in laid.named_modules():
        if isinstance(module, Linear):
            wide = module.out_features > module.in_features
            assert module.weight.t().is_contiguous() == wide and module.weight.is_contiguous() != wide, name
    assert laid.lm_head.weight is laid.transformer.wte.weight  # still one tied matrix
    assert laid.transformer.h[0].attn.c_attn.weight.stride() == (1, 3 * 32)
    idx = torch.randint(0, 50, (2, 20))
    with torch.no_grad(), torch_threads(2):
        assert torch.allclose(model(idx)[0], laid(idx)[0], atol=1e-5)
        caches = [KVCache(m.config, 2) for m in (model, laid)]
        for m, cache in zip((model, laid), caches, strict=True):
            m(idx[:, :12], kv_cache=cache)
        for t in range(12, 20):  # one-token decode steps: the split path, by input rows for the wide weights
            a, b = (m(idx[:, t:t + 1], kv_cache=c)[0] for m, c in zip((model, laid), caches, strict=True))
            assert torch.allclose(a, b, atol=1e-5), t
    assert decode_layout(laid.to(torch.bfloat16)).transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
