"""Where and how the model runs: device, precision, seeding, torch.compile, torch.distributed.

Owns every decision that depends on the hardware, each behind one named function, so the
training and sampling code read the same on CPU, CUDA and MPS. Nothing here runs at import time:
no CUDA queries and no `torch.set_*` until a function is called.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from gptkit.config import approx_params
from gptkit.errors import UsageError


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda > mps > cpu. An explicit device that is not available is a usage error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu")
    return dev


def cpu_supports_bf16() -> bool:
    """True when this CPU has AMX tiles, whose bf16 matmuls are a real speed-up over fp32 (AVX-512
    BF16 alone, which oneDNN's own check accepts, was slower than fp32 end to end: benchmarks/RESULTS.md)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype. auto: bf16 on GPUs that support it (fp16 on older ones) and on CPUs with
    AMX; fp32 elsewhere."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name != "auto":
        if name == "float16" and device.type == "cpu":
            raise UsageError("--dtype float16 is for GPUs; on CPU use bfloat16 or float32")
        return table[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16  # AMX: bf16 matmuls run several times faster than fp32
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; weights, optimizer state and the loss stay fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_fast_math(device: torch.device) -> None:
    """TF32 matmuls on Ampere+ GPUs (a free ~2x on fp32 matmuls there)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def want_compile(setting: bool | None, device: torch.device) -> bool:
    """None (auto) compiles on CUDA only: on a small CPU the gain is small and compiling takes long."""
    return device.type == "cuda" if setting is None else setting


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(model)  # inductor; works on CPU (needs a C compiler) and CUDA


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DistInfo:
    """Process layout under torchrun; a plain run is rank 0 of world 1."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialise torch.distributed when torchrun launched us: NCCL on GPU, gloo on CPU."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(), pick_device(device_name)
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return info, device


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sdpa_context(device: torch.device):
    """On CUDA, ask for the fused attention kernels explicitly (flash first, then memory-efficient,
    cuDNN), so a shape or dtype that would silently fall back to the slow T×T path is visible."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH])


def grad_scaler(device: torch.device, dtype: torch.dtype):
    """fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


# Dense peak throughput (FLOP/s) by GPU name fragment, for MFU: bf16/fp16 tensor cores, no sparsity.
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                  "A10": 125e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak for MFU: a table for GPUs, a short measured matmul on CPU (its real ceiling)."""
    override = os.environ.get("GPTKIT_PEAK_FLOPS")
    if override:
        return float(override)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value if dtype != torch.float32 else value / 2  # TF32 runs at about half
        return None
    if device.type == "cpu":
        import time

        n = 1024
        a = torch.randn(n, n, dtype=dtype if dtype != torch.float16 else torch.float32)
        b = torch.randn(n, n, dtype=a.dtype)
        a @ b  # warm up
        t = time.perf_counter()
        reps = 0
        while time.perf_counter() - t < 0.2:
            a @ b
            reps += 1
        return 2 * n**3 * reps / (time.perf_counter() - t)
    return None


def agree_to_stop(want_stop: bool, dist_info: DistInfo, device: torch.device) -> bool:
    """Under DDP every rank must leave the loop at the same step: stop if any rank wants to."""
    if not dist_info.enabled:
        return want_stop
    import torch.distributed as dist

    flag = torch.tensor([1.0 if want_stop else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def all_reduce_mean(value: float, dist_info: DistInfo, device: torch.device) -> float:
    """The mean of a number over all ranks (the value itself in a single process)."""
    if not dist_info.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist_info.world_size


# Memory limits: refuse a job that cannot fit with one clear line, instead of being OOM-killed halfway.
# The estimates are deliberately rough (within a factor of ~2); they exist to catch absurd settings.
def available_memory(device: torch.device) -> int | None:
    """Bytes the job can still get: free memory on a CUDA device; otherwise the OS's MemAvailable,
    lowered to a container's cgroup limit when one is set. None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    for limit, usage in (("memory.max", "memory.current"),  # cgroup v2, then v1
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            room = _read_int(f"/sys/fs/cgroup/{limit}") - _read_int(f"/sys/fs/cgroup/{usage}")
        except (OSError, ValueError):  # no such file, or "max": no limit
            continue
        avail = room if avail is None else min(avail, room)
        break
    return avail


def _read_int(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read())


def check_memory(need: int, what: str, fix: str, device: torch.device) -> None:
    """UsageError when `need` bytes exceed what is available (GPTKIT_MEMORY_CHECK=0 skips the check)."""
    if os.environ.get("GPTKIT_MEMORY_CHECK") == "0":
        return
    avail = available_memory(device)
    if avail is not None and need > avail:
        raise UsageError(f"{what} needs about {_gib(need)} of memory but only {_gib(avail)} is available "
                         f"on {device.type}; {fix}")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**28 else f"{n / 2**20:,.0f} MiB"


def check_training_memory(cfg, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
    """Weights, gradients and AdamW moments (16 bytes a parameter, fp32) plus one micro-batch's
    activations: ~16 values per layer and token kept for backward (in the autocast dtype), and the
    fp32 (B, T, V) logits, their softmax and its gradient."""
    tokens = batch_size * cfg.block_size
    act = cfg.n_layer * 16 * cfg.n_embd * torch.empty((), dtype=dtype).element_size()
    need = 16 * approx_params(cfg) + tokens * (act + 3 * cfg.vocab_size * 4)
    what = f"training {approx_params(cfg) / 1e6:,.1f}M parameters with --batch-size {batch_size} x --block-size {cfg.block_size}"
    check_memory(need, what, "lower --batch-size (--grad-accum keeps the tokens per step), --block-size or the model "
                 "size", device)


def check_sampling_memory(cfg, num_samples: int, prompt_tokens: int, max_new_tokens: int,
                          device: torch.device, dtype: torch.dtype) -> None:
    """Per sample row: the KV cache (2, n_layer, block_size, n_embd), the (B, prompt + new) id history,
    the kept ids and log-probabilities (~64 bytes a token as Python lists) and a few (B, V) rows."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_row = (2 * cfg.n_layer * cfg.block_size * cfg.n_embd * itemsize + 8 * (prompt_tokens + max_new_tokens)
               + 64 * max_new_tokens + 17 * cfg.vocab_size)
    check_memory(num_samples * per_row, f"--num-samples {num_samples} x --max-new-tokens {max_new_tokens}",
                 "lower --num-samples or --max-new-tokens", device)
