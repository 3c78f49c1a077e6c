"""How much memory a job needs and how much it can get: refuse one that cannot fit with one clear
line instead of being killed halfway, and size training's micro-batches to the device.

Owns `available_memory` (free CUDA memory; else the OS's MemAvailable, lowered to a container's
cgroup limit), the estimates for training and sampling (deliberately rough, within a factor of ~2:
they exist to catch absurd settings) and `fit_micro_batch`. It reads /proc and /sys only when
called, never at import; GPTKIT_MEMORY_CHECK=0 turns the checks off.
"""

from __future__ import annotations

import os

import torch

from gptkit.config import approx_params
from gptkit.errors import UsageError


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
