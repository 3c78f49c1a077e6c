"""Where and how the model runs: device, precision, seeding, torch.compile, torch.distributed.

Owns the decisions that depend on the machine, each behind one named function, so the training and
sampling code read the same on CPU, CUDA and MPS. What the hardware can do (native bf16, TF32, the
fused attention probe, peak FLOP/s) is `hardware.py`; the memory a job needs and the micro-batch
that fits are `memory.py`. Nothing here runs at import time: no CUDA queries and no `torch.set_*`
until a function is called.
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

from gptkit.errors import UsageError
from gptkit.hardware import native_bf16


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

