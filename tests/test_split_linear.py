"""The opt-in CPU decode split (gptkit/split_linear.py): each split is the same product as F.linear,
the model keeps its parameters and state dict, training and long inputs never take it, and the plan
is chosen by the rule its docstring states."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit import split_linear
from gptkit.config import ModelConfig
from gptkit.generate import Engine
from gptkit.model import GPT
from gptkit.sampling import SamplingParams
from gptkit.split_linear import SplitLinear, column_major, pick, use_fastest
from tests.conftest import torch_threads


def split(n_in: int, n_out: int, mode: str, parts: int, bias: bool) -> tuple[nn.Linear, SplitLinear]:
    torch.manual_seed(0)
    ref = nn.Linear(n_in, n_out, bias=bias)
    layer = copy.deepcopy(ref)
    layer.__class__ = SplitLinear
    layer.mode, layer.parts = mode, parts
    if mode == "inputs":
        layer.weight.data = column_major(layer.weight.data)
    return ref, layer


@pytest.mark.parametrize("mode", ["rows", "inputs"])
@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_each_split_is_the_product_f_linear_computes(mode, parts, rows, bias):
    ref, layer = split(48, 96, mode, parts, bias)
    x = torch.randn(rows, 1, 48)
    with torch.inference_mode():
        got = layer(x)
    assert got.shape == (rows, 1, 96)
    assert torch.allclose(got, F.linear(x, ref.weight, ref.bias), atol=1e-5, rtol=1e-5)
    assert layer._views is not None  # the split ran, not the F.linear fallback


def test_training_long_inputs_and_moved_weights_take_f_linear_or_new_views():
    ref, layer = split(48, 96, "rows", 2, True)
    x = torch.randn(1, 48, requires_grad=True)
    layer(x).sum().backward()  # autograd: F.linear, and gradients flow
    assert layer._views is None and layer.weight.grad is not None
    long = torch.randn(split_linear.DECODE_ROWS + 1, 48)
    with torch.inference_mode():
        assert torch.allclose(layer(long), F.linear(long, ref.weight, ref.bias), atol=1e-5)
        assert layer._views is None
        layer(x.detach())
        layer.double()  # new storage: the views are rebuilt, the product stays right
        assert torch.allclose(layer(x.detach().double()), F.linear(x.double(), ref.weight.double(), ref.bias.double()))


def test_the_plan_rule():
    assert pick({"plain": 1.0, "rows": 0.5, "wide inputs": 0.6}) == ("rows", 0.5)
    assert pick({"plain": 1.0, "rows": 0.9, "wide inputs": 0.95}) == ("plain", 0.0)  # close: F.linear
    assert pick({"plain": 1.0, "rows": 1.2, "wide inputs": 1.1}) == ("plain", 0.0)
    assert split_linear.mode_for("wide inputs", (1152, 384), 2, torch.float32) == "inputs"
    assert split_linear.mode_for("wide inputs", (384, 1536), 2, torch.float32) == "rows"
    assert split_linear.mode_for("wide inputs", (1152, 384), 2, torch.bfloat16) == "rows"  # no 16-bit partial sums
    assert split_linear.mode_for("rows", (65, 384), 2, torch.float32) == "plain"  # 65 rows do not split in two


@pytest.mark.parametrize("plan", ["rows", "wide inputs"])
def test_a_split_model_decodes_the_text_of_the_model_as_trained(plan, monkeypatch):
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=66)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    fast = copy.deepcopy(model)
    monkeypatch.setattr(split_linear, "pick", lambda seconds: (plan, 0.5))  # whatever this machine measures
    with torch_threads(2):
        assert use_fastest(fast) == (plan, 0.5)
        assert all(type(m) is SplitLinear for m in fast.modules() if isinstance(m, nn.Linear))
        assert fast.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), model.state_dict().values(), strict=True))
        params = SamplingParams(temperature=0)
        steps = [list(Engine(m).generate([1, 2, 3], 70, params, seed=0)) for m in (model, fast)]
    assert [int(s.ids[0]) for s in steps[0]] == [int(s.ids[0]) for s in steps[1]]
    assert all(torch.allclose(a.logits, b.logits, atol=1e-5) for a, b in zip(*steps, strict=True))
    assert any(m._views is not None for m in fast.modules() if isinstance(m, SplitLinear))


def test_one_thread_or_a_gpu_model_is_left_on_f_linear():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=10))
    assert use_fastest(model, parts=1) == ("plain", 0.0)
    assert all(m.mode == "plain" for m in model.modules() if isinstance(m, SplitLinear))
