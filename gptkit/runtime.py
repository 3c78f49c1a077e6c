"""Where and how the model runs: device, precision, seeding, torch.compile, torch.distributed.

Owns every decision that depends on the hardware, each behind one named function, so the
training and sampling code read the same on CPU, CUDA and MPS. Nothing here runs at import time:
no CUDA queries and no `torch.set_*` until a function is called.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def native_bf16(device: torch.device) -> bool:
    """bf16 tensor cores: compute capability 8.0 (Ampere) or newer. `torch.cuda.is_bf16_supported()`
    also counts the emulation a V100 or T4 runs at fp32 speed, without flash attention."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype. auto: bf16 on GPUs with native bf16, fp16 (with a GradScaler) on older
    ones; fp32 on CPU and MPS. On a CPU, training then measures whether bf16 is clearly faster at
    the model's shapes (`faster_cpu_dtype`)."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name != "auto":
        if name == "float16" and device.type == "cpu":
            raise UsageError("--dtype float16 is for GPUs; on CPU use bfloat16 or float32")
        return table[name]
    if device.type == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return torch.float32


CLEARLY_FASTER = 0.8  # bf16 must take at most this share of fp32's time: a close call stays exact fp32


def faster_cpu_dtype(step: Callable[[torch.dtype], None], repeats: int = 3) -> tuple[torch.dtype, float]:
    """Time `step(dtype)` (one forward and backward of the model at its own shapes) in fp32 and in
    bf16 autocast, alternating, the best of `repeats` after a warm-up of each. Returns bf16 only when
    it takes at most CLEARLY_FASTER of fp32's time, and the measured ratio. Whether bf16 pays on a
    CPU depends on its vector units, its BLAS and the shapes, so it is measured, never looked up."""
    best = {torch.float32: math.inf, torch.bfloat16: math.inf}
    for dtype in best:
        step(dtype)
    for _ in range(repeats):
        for dtype in best:
            t = time.perf_counter()
            step(dtype)
            best[dtype] = min(best[dtype], time.perf_counter() - t)
    ratio = best[torch.bfloat16] / max(best[torch.float32], 1e-12)
    return (torch.bfloat16 if ratio <= CLEARLY_FASTER else torch.float32), ratio


_CPU_DTYPES: dict[tuple, tuple[torch.dtype, float]] = {}  # measured once per model shape and thread count


def cpu_training_dtype(model: torch.nn.Module, rows: int) -> tuple[torch.dtype, float]:
    """`faster_cpu_dtype` for a forward and backward of `model` (a GPT, in train mode) on `rows`
    sequences of its block size, without dropout and with its own generator, so the training's
    random streams are untouched; its gradients are cleared afterwards. Once per shape per process."""
    cfg = model.config
    key = (tuple(sorted(vars(cfg).items())), rows, torch.get_num_threads())
    if key not in _CPU_DTYPES:
        x = torch.randint(0, cfg.vocab_size, (rows, cfg.block_size), generator=torch.Generator().manual_seed(0))

        def step(dtype: torch.dtype) -> None:
            with autocast(torch.device("cpu"), dtype):
                _, loss = model(x, x)
            loss.backward()

        model.eval()
        try:
            _CPU_DTYPES[key] = faster_cpu_dtype(step)
        finally:
            model.train()
            model.zero_grad(set_to_none=True)
    return _CPU_DTYPES[key]


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


# A compiled decode step takes tens of seconds to build (CUDA graphs included) and saves about a
# millisecond a token over eager on a GPU, so `sample` compiles by itself only for jobs this long.
COMPILE_DECODE_MIN_STEPS = 20_000


def want_compile_decode(setting: bool | None, device: torch.device, steps: int) -> bool:
    """--compile/--no-compile, or (auto) on CUDA when the job has at least COMPILE_DECODE_MIN_STEPS
    decode steps (the rows of a batch decode together: one step); never by itself on a CPU."""
    if setting is not None:
        return setting
    return device.type == "cuda" and steps >= COMPILE_DECODE_MIN_STEPS


def missing_toolchain(device: torch.device) -> str | None:
    """What torch.compile's inductor needs here and cannot find, or None. On CUDA Triton builds its
    kernel launcher with a C compiler against Python's headers; on a CPU inductor compiles C++."""
    import shutil
    import sysconfig

    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
        compilers = [os.environ.get("CC"), "cc", "gcc", "clang"]
        if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
            return "Python's C headers (Python.h) are missing"
    else:
        compilers = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    if not any(c and shutil.which(c) for c in compilers):
        return f"no {'C' if device.type == 'cuda' else 'C++'} compiler is on the PATH"
    return None


def compile_model(model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, str | None]:
    """torch.compile (inductor, fixed shapes) when the toolchain is there; otherwise the model as
    is and the one line that says why."""
    missing = missing_toolchain(device)
    if missing:
        return model, f"torch.compile is off: {missing}; training runs eager (--no-compile skips the check)"
    return torch.compile(model, dynamic=False), None


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed compilation raises at the compiled model's first call (a missing or broken
    compiler, an unsupported op): training catches these once and continues eager."""
    from torch._dynamo.exc import BackendCompilerFailed

    errors: list[type[BaseException]] = [BackendCompilerFailed]
    try:
        from torch._inductor.exc import InductorError
        errors.append(InductorError)
    except ImportError:  # older torch raises BackendCompilerFailed alone
        pass
    return tuple(errors)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_dropout(seed: int, rank: int) -> None:
    """Each rank its own dropout masks (seed + rank, as nanoGPT); the weights were initialised from
    `seed` alike on every rank, and the batch order has its own generator, shared by all ranks."""
    torch.manual_seed((seed + rank) % 2**63)


def rng_state(device: torch.device) -> dict[str, list[int]]:
    """This process's torch generators (CPU, and the GPU's when training on one), for exact resume."""
    state = {"torch": torch.get_rng_state().tolist()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def set_rng_state(state: dict[str, list[int]], device: torch.device) -> None:
    if "torch" in state:
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)


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
    if not dist.is_initialized():  # device_id: NCCL binds this rank's GPU now, not at the first collective
        dist.init_process_group(backend=backend, **({"device_id": device} if use_cuda else {}))
    return info, device


def teardown_distributed(finished: bool = False) -> None:
    """Destroy the process groups. `finished` (every rank ended the run): first a barrier, so no rank's
    interpreter shuts down while its gloo worker threads still let go of the last collectives' tensors
    (that takes the GIL: during finalization the thread is ended and the rank aborts, "terminate called
    without an active exception"); a rank that left on an error is not waited for."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        try:
            dist.barrier()
        except RuntimeError:  # another rank stopped on its own error: it says why
            pass
    dist.destroy_process_group()


def sdpa_fallback(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int, int]) -> str | None:
    """One causal attention forward and backward at the training shape (B, n_head, T, head_dim) and
    dtype with the fused kernels alone (flash, cuDNN, memory-efficient; no math). Returns why none can
    run, or None. Run once at start: a fallback to the T×T math kernel would otherwise be silent."""
    if device.type not in ("cuda", "cpu"):
        return None
    import warnings

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    g = torch.Generator(device=device).manual_seed(0)  # the training's own generators are left alone
    q = torch.randn(shape, device=device, dtype=dtype, generator=g).requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel(fused):
                F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
            return None
        except RuntimeError as e:
            why = next((str(w.message).splitlines()[0] for w in caught), str(e).splitlines()[0])
    return (f"no fused attention kernel runs {str(dtype).removeprefix('torch.')} heads of {shape[3]} on "
            f"{device.type} ({why}); attention falls back to the slow T×T math kernel")


def to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch on the device. On CUDA through pinned memory, without waiting: the copy queues
    behind the work already launched instead of draining the GPU (a pageable copy synchronizes)."""
    t = torch.from_numpy(batch)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def out_of_memory(e: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def grad_scaler(device: torch.device, dtype: torch.dtype):
    """fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


# Dense (no sparsity) bf16/fp16 tensor-core FLOP/s by a fragment of the GPU's name, for MFU; the
# first fragment the name contains wins, so each variant comes before the family name it contains.
# NVIDIA's data sheets (as torchtitan's table); A10G per AWS/Baseten; GeForce at fp32 accumulate.
GPU_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800 PCIe", 756e12),
    ("H800", 989e12), ("H20", 148e12), ("GB200", 2500e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("A40", 150e12),
    ("A30", 165e12), ("RTX 6000 Ada", 364e12), ("A6000", 155e12), ("4090", 165e12), ("3090", 71e12),
    ("V100", 125e12), ("T4", 65e12),
)


def gpu_peak(name: str) -> float | None:
    """The table's dense bf16 peak for a GPU named `name` (torch.cuda.get_device_name), or None."""
    return next((value for key, value in GPU_PEAK_FLOPS if key in name), None)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak for MFU: the table for GPUs (None for one it lacks), a short measured matmul
    on CPU (its real ceiling); GPTKIT_PEAK_FLOPS overrides both."""
    override = os.environ.get("GPTKIT_PEAK_FLOPS")
    if override:
        return float(override)
    if device.type == "cuda":
        peak = gpu_peak(torch.cuda.get_device_name(device))
        return None if peak is None else peak if dtype != torch.float32 else peak / 2  # TF32 runs at about half
    if device.type == "cpu":
        n = 1024
        a = torch.ones(n, n, dtype=dtype if dtype != torch.float16 else torch.float32)  # no generator drawn
        b = torch.ones(n, n, dtype=a.dtype)
        a @ b  # warm up
        t = time.perf_counter()
        reps = 0
        while time.perf_counter() - t < 0.2:
            a @ b
            reps += 1
        return 2 * n**3 * reps / (time.perf_counter() - t)
    return None


def mfu_peak(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str | None]:
    """`peak_flops`, and for a GPU the table lacks the one line a run says about it (else None)."""
    peak = peak_flops(device, dtype)
    if peak is not None or device.type != "cuda":
        return peak, None
    return None, (f"MFU is not shown: no peak FLOP/s is known for {torch.cuda.get_device_name(device)!r}; set "
                  "GPTKIT_PEAK_FLOPS to its dense bf16 FLOP/s")


def all_reduce_mean(value: float, dist_info: DistInfo, device: torch.device) -> float:
    """The mean of a number over all ranks (the value itself in a single process)."""
    if not dist_info.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist_info.world_size


def mean_over_ranks(t: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """The element-wise mean of a tensor over all ranks, left on the device (no host sync)."""
    if not dist_info.enabled:
        return t
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t / dist_info.world_size


def agree_min(value: int, dist_info: DistInfo, device: torch.device) -> int:
    """The smallest of every rank's `value`: a choice all ranks must share (the micro-batch, the dtype)."""
    if not dist_info.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather_objects(obj: Any, dist_info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (a list of one in a single process)."""
    if not dist_info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


# Memory limits: refuse a job that cannot fit with one clear line, instead of being OOM-killed halfway.
# The estimates are deliberately rough (within a factor of ~2); they exist to catch absurd settings.
def available_memory(device: torch.device, meminfo: str = "/proc/meminfo",
                     cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Bytes the job can still get: free memory on a CUDA device; otherwise the OS's MemAvailable
    (from `meminfo`), lowered to a container's cgroup limit (under `cgroup`) when one is set. None
    when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    avail = None
    try:
        with open(meminfo, encoding="ascii") as f:
            avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    for limit, usage in (("memory.max", "memory.current"),  # cgroup v2, then v1
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            room = _read_int(f"{cgroup}/{limit}") - _read_int(f"{cgroup}/{usage}")
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


def training_memory(cfg, batch_size: int, dtype: torch.dtype) -> int:
    """Bytes to train: weights, gradients and AdamW moments (16 bytes a parameter, fp32) plus one
    micro-batch's activations: ~16 values per layer and token kept for backward (in the autocast
    dtype), and the fp32 (B, T, V) logits, their softmax and its gradient."""
    act = cfg.n_layer * 16 * cfg.n_embd * torch.empty((), dtype=dtype).element_size()
    return 16 * approx_params(cfg) + batch_size * cfg.block_size * (act + 3 * cfg.vocab_size * 4)


def check_training_memory(cfg, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
    need = training_memory(cfg, batch_size, dtype)
    what = f"training {approx_params(cfg) / 1e6:,.1f}M parameters with --batch-size {batch_size} x --block-size {cfg.block_size}"
    check_memory(need, what, "lower --batch-size (the tokens per step stay: more micro-batches), --block-size or the "
                 "model size", device)


# Rows (sequences x block) per micro-batch past which a device gains nothing but memory use: a
# CPU's matmuls run at full speed from a few thousand rows and larger activations only spill its
# caches; a GPU's kernels saturate by some tens of thousands. Memory may lower it (fit_micro_batch).
MICRO_BATCH_ROWS = {"cpu": 4096, "mps": 8192, "cuda": 32768}
MEMORY_SHARE = 0.5  # of the available memory, for a micro-batch: the estimate is rough (within ~2x)


def fit_micro_batch(cfg, sequences: int, device: torch.device, dtype: torch.dtype) -> int:
    """Sequences per micro-batch for a step of `sequences` on this process: as many as the device
    takes well (MICRO_BATCH_ROWS) and its memory holds (MEMORY_SHARE of what is available), at
    least one; the caller splits the step into equal micro-batches of at most this many."""
    best = max(1, min(sequences, MICRO_BATCH_ROWS.get(device.type, 4096) // cfg.block_size))
    avail = available_memory(device)
    if avail is not None and os.environ.get("GPTKIT_MEMORY_CHECK") != "0":
        fixed = training_memory(cfg, 0, dtype)
        per_sequence = training_memory(cfg, 1, dtype) - fixed
        best = max(1, min(best, int((MEMORY_SHARE * avail - fixed) // per_sequence)))
    return best


def check_sampling_memory(cfg, num_samples: int, prompt_tokens: int, max_new_tokens: int,
                          device: torch.device, dtype: torch.dtype) -> None:
    """Per sample row: the KV cache (2, n_layer, block_size, n_embd), the (B, prompt + new) id history,
    the kept ids and log-probabilities (~64 bytes a token as Python lists) and a few (B, V) rows."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_row = (2 * cfg.n_layer * cfg.block_size * cfg.n_embd * itemsize + 8 * (prompt_tokens + max_new_tokens)
               + 64 * max_new_tokens + 17 * cfg.vocab_size)
    check_memory(num_samples * per_row, f"--num-samples {num_samples} x --max-new-tokens {max_new_tokens}",
                 "lower --num-samples or --max-new-tokens", device)
