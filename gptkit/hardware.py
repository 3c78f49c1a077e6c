"""What the hardware can do, found out when asked: native bf16 and TF32 on a GPU, whether a fused
attention kernel runs at the training shape, and the peak FLOP/s behind MFU (a GPU's from its data
sheet, a CPU's measured by a short matmul).

Owns the probes and the lookup table; the choices made from them (device, dtype, compile) are
`runtime.py`'s, and the memory a job needs is `memory.py`'s. Nothing runs at import time.
"""

from __future__ import annotations

import os
import time

import torch


def native_bf16(device: torch.device) -> bool:
    """bf16 tensor cores: compute capability 8.0 (Ampere) or newer. `torch.cuda.is_bf16_supported()`
    also counts the emulation a V100 or T4 runs at fp32 speed, without flash attention."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def enable_fast_math(device: torch.device) -> None:
    """TF32 matmuls on Ampere+ GPUs (a free ~2x on fp32 matmuls there)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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
