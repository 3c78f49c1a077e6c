"""Every decision gptkit makes for a GPU, taken on this CPU with `torch.cuda` patched: the precision
by compute capability, the peak FLOP/s by GPU name, the tokens per step under 1, 8 and 16
processes, the micro-batch that fits the device, pinned non-blocking copies, the compile toolchain,
the decode-step compile for long jobs only, the SDPA probe; and MFU's FLOPs against torch's own
flop counter."""

from __future__ import annotations

import math

import pytest
import torch

from gptkit import hardware, memory, runtime
from gptkit.config import ModelConfig, resolve_config
from gptkit.model import GPT
from gptkit.train import batch_plan, flops_per_token

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_precision_follows_the_compute_capability(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16 at fp32 speed, which `is_bf16_supported()` counts as
    support: they get fp16 with a GradScaler; A100 (8.0) and H100 (9.0) get bf16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert runtime.pick_dtype("auto", CUDA) == expected
    assert runtime.grad_scaler(torch.device("cpu"), expected).is_enabled() == (expected == torch.float16)
    assert runtime.pick_dtype("bfloat16", CUDA) == torch.bfloat16  # an explicit choice is kept


PEAKS = {  # torch.cuda.get_device_name as the GPUs report it -> dense bf16 FLOP/s from the data sheets
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12, "NVIDIA H800": 989e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA L40S": 362e12, "NVIDIA L40": 181e12, "NVIDIA L4": 121e12, "NVIDIA A10": 125e12, "NVIDIA A10G": 70e12,
    "NVIDIA B200": 2250e12, "NVIDIA GeForce RTX 4090": 165e12, "NVIDIA RTX A6000": 155e12,
    "Tesla V100-SXM2-16GB": 125e12, "Tesla T4": 65e12,
}


def test_peak_flops_by_gpu_variant_and_unknown_gpus_said_once(monkeypatch):
    monkeypatch.delenv("GPTKIT_PEAK_FLOPS", raising=False)
    for name, peak in PEAKS.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert hardware.peak_flops(CUDA, torch.bfloat16) == peak, name
        assert hardware.mfu_peak(CUDA, torch.bfloat16) == (peak, None), name
        assert hardware.peak_flops(CUDA, torch.float32) == peak / 2  # TF32
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Quantum X1")
    peak, note = hardware.mfu_peak(CUDA, torch.bfloat16)
    assert peak is None and "NVIDIA Quantum X1" in note and "GPTKIT_PEAK_FLOPS" in note
    monkeypatch.setenv("GPTKIT_PEAK_FLOPS", "1e15")
    assert hardware.mfu_peak(CUDA, torch.bfloat16) == (1e15, None)


def test_the_cpu_peak_is_measured_unless_given(monkeypatch):
    """The suite sets GPTKIT_PEAK_FLOPS (conftest) so trainings skip the probe; here it runs, and its
    figure is of the order of a 1024² fp32 matmul timed here (a ratio in one run, no absolute speed)."""
    import time

    monkeypatch.delenv("GPTKIT_PEAK_FLOPS", raising=False)
    peak = hardware.peak_flops(torch.device("cpu"), torch.float32)
    a = torch.ones(1024, 1024)
    a @ a
    t = time.perf_counter()
    a @ a
    mine = 2 * 1024**3 / (time.perf_counter() - t)
    assert math.isfinite(peak) and mine / 20 < peak < mine * 20, (peak, mine)
    monkeypatch.setenv("GPTKIT_PEAK_FLOPS", "3e11")
    assert hardware.peak_flops(torch.device("cpu"), torch.float32) == 3e11


@pytest.mark.parametrize("size", [
    dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=65),
    dict(n_layer=3, n_head=4, n_embd=96, block_size=48, vocab_size=1000, pos_encoding="rope", mlp="swiglu",
         norm="rmsnorm", bias=False),
    dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),  # GPT-2 124M: 854.6 MFLOP/token
])
def test_mfu_flops_are_what_torchs_flop_counter_counts(size):
    """The tied output layer's 6·V·C was missing (0.73x the counted FLOPs at 124M). Counted on the meta
    device, where attention runs as two matmuls over the whole T×T, as the counter counts flash too."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(**size)
    with torch.device("meta"):
        model = GPT(cfg)
        idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    counter = FlopCounterMode(display=False)
    with counter:
        _, loss = model(idx, idx)
        loss.backward()
    assert flops_per_token(model, cfg) == counter.get_total_flops() / idx.numel()


def _gpu_plan(tc, mc, world, free_bytes, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, free_bytes))
    return batch_plan(tc, mc, world, lambda n: memory.fit_micro_batch(mc, n, CUDA, torch.bfloat16))


@pytest.mark.parametrize("world", [1, 8, 16])
def test_the_gpt2_preset_takes_its_tokens_per_step_on_any_number_of_gpus(monkeypatch, world):
    """`grad_accum=40` was per process: 8 GPUs trained on 3.9M tokens a step, nanoGPT's recipe is 491,520."""
    mc, tc = resolve_config("gpt2", None, {}, device_type="cuda")
    mc.vocab_size = 50257
    for free in (80 * 2**30, 24 * 2**30):  # an H100, a 24 GB card: other micro-batches, the same step
        micro, accum = _gpu_plan(tc, mc, world, free, monkeypatch)
        assert micro * accum * mc.block_size * world == 491_520, (world, free, micro, accum)
        assert memory.training_memory(mc, micro, torch.bfloat16) <= memory.MEMORY_SHARE * free
    assert _gpu_plan(tc, mc, 1, 80 * 2**30, monkeypatch) == (32, 15)  # 32 x 1024 rows per micro-batch
    assert _gpu_plan(tc, mc, 1, 24 * 2**30, monkeypatch)[0] < 32  # memory lowers it


def test_the_baby_preset_on_a_cpu_keeps_its_tokens_in_smaller_micro_batches():
    """64 x 256 tokens a step, one 64-sequence batch on a GPU; on a CPU 4 micro-batches of 16, which
    keep the activations a quarter the size (the preset's 4.1 GB peak RSS)."""
    mc, tc = resolve_config("baby", None, {})
    mc.vocab_size = 65
    fit = memory.fit_micro_batch
    assert batch_plan(tc, mc, 1, lambda n: fit(mc, n, torch.device("cpu"), torch.float32)) == (16, 4)
    explicit = resolve_config("baby", None, {"batch_size": 8})[1]  # --batch-size: still 64 x 256 a step
    assert batch_plan(explicit, mc, 1, lambda n: n) == (8, 8)
    both = resolve_config("baby", None, {"batch_size": 8, "grad_accum": 2})[1]  # both: they make the step
    assert both.tokens_per_step is None and batch_plan(both, mc, 1, lambda n: n) == (8, 2)


def test_batches_reach_the_gpu_through_pinned_memory_without_a_wait(monkeypatch):
    """A pageable host-to-device copy synchronizes: two drains of the GPU per micro-step."""
    import numpy as np

    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **kw: calls.append(("to", a, kw)) or self)
    runtime.to_device(np.zeros((2, 3), dtype=np.int64), CUDA)
    assert calls == ["pin", ("to", (CUDA,), {"non_blocking": True})]


def test_compile_checks_its_toolchain_and_compiles_fixed_shapes(monkeypatch):
    import shutil

    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.update(kw) or model)
    model = torch.nn.Linear(2, 2)
    assert runtime.compile_model(model, torch.device("cpu")) == (model, None) and seen == {"dynamic": False}
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a slim container: no compiler at all
    compiled, why = runtime.compile_model(model, torch.device("cpu"))
    assert compiled is model and "no C++ compiler" in why and "eager" in why
    assert "C compiler" in runtime.missing_toolchain(CUDA) or "Triton" in runtime.missing_toolchain(CUDA)


def test_sample_compiles_the_decode_step_only_for_jobs_that_repay_it():
    cpu = torch.device("cpu")
    assert not runtime.want_compile_decode(None, CUDA, 500)  # eager finishes before a compile would
    assert runtime.want_compile_decode(None, CUDA, runtime.COMPILE_DECODE_MIN_STEPS)
    assert not runtime.want_compile_decode(None, cpu, 10**7)
    assert runtime.want_compile_decode(True, cpu, 1) and not runtime.want_compile_decode(False, CUDA, 10**7)


def test_one_sdpa_probe_with_the_fused_kernels_only(monkeypatch):
    """The real shapes through flash/cuDNN/memory-efficient, never math: a fallback to the T×T kernel
    is said, not silent (the old per-step context enabled math as well)."""
    import torch.nn.functional as F

    cpu = torch.device("cpu")
    assert hardware.sdpa_fallback(cpu, torch.float32, (2, 4, 64, 32)) is None
    assert hardware.sdpa_fallback(cpu, torch.bfloat16, (2, 4, 64, 32)) is None
    math_enabled = []
    real = F.scaled_dot_product_attention

    def only_math(*args, **kwargs):
        math_enabled.append(torch.backends.cuda.math_sdp_enabled())
        raise RuntimeError("No available kernel. Aborting execution.")

    monkeypatch.setattr(F, "scaled_dot_product_attention", only_math)
    why = hardware.sdpa_fallback(cpu, torch.float16, (2, 4, 64, 96))
    assert math_enabled == [False]
    assert "float16" in why and "96" in why and "math" in why
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    assert torch.backends.cuda.math_sdp_enabled()  # the probe leaves the backends as it found them


def test_rng_state_includes_the_gpus_generator(monkeypatch):
    """Resume on a GPU was not exact: only the CPU generator was saved."""
    state = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t, device=None: restored.append((t, device)))
    saved = runtime.rng_state(CUDA)
    assert saved["cuda"] == list(range(16)) and len(saved["torch"]) == len(torch.get_rng_state())
    runtime.set_rng_state(saved, CUDA)
    assert torch.equal(restored[0][0], state) and restored[0][1] == CUDA
    assert "cuda" not in runtime.rng_state(torch.device("cpu"))


def test_dropout_seed_differs_by_rank_and_the_weights_do_not():
    runtime.seed_everything(5)
    a = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=10))
    runtime.seed_dropout(5, 0)
    mask0 = torch.rand(100)
    runtime.seed_everything(5)
    b = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=10))
    runtime.seed_dropout(5, 1)
    mask1 = torch.rand(100)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(mask0, mask1)


@pytest.mark.parametrize("bf16_time, expected", [(0.002, torch.bfloat16), (0.0095, torch.float32),
                                                  (0.03, torch.float32)])
def test_cpu_auto_precision_is_measured_not_looked_up(monkeypatch, bf16_time, expected):
    """bf16 only where a step is clearly faster in it, whatever the CPU reports having (AMX here)."""
    import time

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    clock = {"t": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["t"])

    def step(dtype):
        clock["t"] += bf16_time if dtype == torch.bfloat16 else 0.01

    dtype, ratio = runtime.faster_cpu_dtype(step)
    assert dtype == expected and ratio == pytest.approx(bf16_time / 0.01)
    assert math.isfinite(ratio)


def test_loss_scaling_is_taken_out_before_the_gradient_clip(tmp_path, monkeypatch):
    """fp16 training scales the loss (65536 at first) and must unscale the gradients before clipping
    them: with the scaler turned on for an fp32 CPU run, where scaling by a power of two is exact, the
    gradient norms, losses and weights are the unscaled run's."""
    from gptkit import checkpoint
    from gptkit.train import train
    from tests.conftest import SHAKESPEARE

    mc, tc = resolve_config("tiny", None, dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4,
                                               grad_accum=1, max_iters=3, eval_interval=3, eval_iters=1,
                                               grad_clip=0.5, dtype="float32", device="cpu"))
    runs = {}
    for name, scaled in (("plain", False), ("scaled", True)):
        if scaled:
            monkeypatch.setattr(runtime, "grad_scaler", lambda device, dtype: torch.amp.GradScaler("cpu"))
        events: list[dict] = []
        train(mc, tc, str(SHAKESPEARE), tmp_path / name, tmp_path, on_event=events.append)
        runs[name] = ([v for e in events if e["event"] == "step" for v in (e["loss"], e["grad_norm"])],
                      checkpoint.load_tensors(checkpoint.read_info(tmp_path / name / checkpoint.LAST), "model."))
    (plain, plain_w), (scaled, scaled_w) = runs["plain"], runs["scaled"]
    assert len(plain) == 6 and plain[1] > tc.grad_clip  # 3 steps (loss, norm); the clip acts
    assert scaled == pytest.approx(plain, rel=1e-6)
    assert all(torch.allclose(plain_w[k], scaled_w[k], atol=1e-7) for k in plain_w)


def test_tf32_matmuls_are_turned_on_for_cuda_only():
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)  # not monkeypatch: it would delete them after
    before = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = False
        hardware.enable_fast_math(torch.device("cpu"))
        assert not any(f.allow_tf32 for f in flags)
        hardware.enable_fast_math(CUDA)
        assert all(f.allow_tf32 for f in flags)
    finally:
        for f, value in zip(flags, before, strict=True):
            f.allow_tf32 = value


def test_torchrun_on_gpus_takes_nccl_and_each_rank_its_own_gpu(monkeypatch):
    """Rank 3 of 4, local rank 1: NCCL bound to cuda:1 at start (device_id), DDP holding the model
    there; `--device cpu` on the same machine takes gloo."""
    import torch.distributed as dist

    from gptkit.loop import Loop

    calls = []
    for name, value in (("RANK", "3"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "4")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    gpu1 = torch.device("cuda", 1)
    info, device = runtime.setup_distributed("auto")
    assert (info.rank, info.local_rank, info.world_size, device) == (3, 1, 4, gpu1)
    assert calls == [("set_device", gpu1), ("init", {"backend": "nccl", "device_id": gpu1})]
    calls.clear()
    assert runtime.setup_distributed("cpu")[1] == torch.device("cpu") and calls == [("init", {"backend": "gloo"})]

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda m, device_ids=None: ("DDP", m, device_ids))
    loop = Loop.__new__(Loop)  # only what wrapping reads
    model = torch.nn.Linear(2, 2)
    loop.dist, loop.device, loop.train_model = info, gpu1, model
    loop._wrap_ddp()
    assert loop.train_model == ("DDP", model, [1])
    loop.device, loop.train_model = torch.device("cpu"), model
    loop._wrap_ddp()
    assert loop.train_model == ("DDP", model, None)


def test_training_compiles_by_default_on_cuda_only():
    cpu = torch.device("cpu")
    assert runtime.want_compile(None, CUDA) and not runtime.want_compile(None, cpu)
    assert runtime.want_compile(True, cpu) and not runtime.want_compile(False, CUDA)


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((7, 5), torch.float16)])
def test_sample_on_a_gpu_takes_its_precision_unless_told(monkeypatch, capability, expected):
    """`sample --dtype auto`: the GPU's autocast precision for the weights (fp32 on a CPU); a --dtype given wins."""
    from gptkit import checkpoint
    from gptkit.cli import sample_cmd
    from gptkit.tokenizers.core import ByteTokenizer

    cfg = ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=256)
    monkeypatch.setattr(runtime, "pick_device", lambda name: CUDA)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(checkpoint, "load_for_inference", lambda ref, store, dev: (GPT(cfg), ByteTokenizer(), None))
    for asked, dtype in (("auto", expected), ("float32", torch.float32)):
        model, _, _, dev = sample_cmd.load("r", None, "auto", asked, None)
        assert dev == CUDA and next(model.parameters()).dtype == dtype, asked
