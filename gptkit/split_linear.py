"""Faster batch-1 decoding on a CPU whose BLAS runs a matrix-vector product on one core (opt-in).

At batch 1 every new token multiplies one row by each weight matrix, so a decode step's speed is how
fast the weights stream from memory. Some BLAS builds (MKL on AMD CPUs, for one) run that product on
a single core whatever torch's thread count; others (MKL on Intel, Accelerate, OpenBLAS) spread it
themselves. `SplitLinear` cuts a weight into one slice per thread and multiplies the slices as one
batched product (`torch.bmm` spreads a batch over the threads), with no copy of the weight:

- ``rows``: slices of its output rows (the weight as trained, row-major);
- ``inputs``: for a weight stored column-major (the same (out, in) values, memory holding the
  transpose), blocks of its input rows, each one contiguous stretch, whose partial products are summed.

Nothing is assumed about the machine: `use_fastest(model)` times a decode step's projections on the
model's own weights, plain `F.linear` against two split plans, and takes a split only where it is
clearly faster (so a machine where they are close always takes plain F.linear, and a seed one text). `gptkit sample` applies it on a CPU; `--cpu-split off` keeps nn.Linear. Same parameters and
state-dict names as nn.Linear. Training, autograd, compiled graphs and inputs of more than a few rows
take F.linear; model.py knows nothing of this module.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DECODE_ROWS = 64  # the split serves inputs of up to this many rows (decode steps of a batch)
MIN_SAVING = 0.15  # a plan must save this share of a pass to be kept: close calls stay on F.linear
REPEATS = 5  # timed passes per configuration; the best counts


class SplitLinear(nn.Linear):
    """nn.Linear whose small inference inputs run as `parts` batched slices (see the module docstring)."""

    mode = "plain"  # "plain" | "rows" | "inputs"
    parts = 1
    _views: tuple | None = None  # (the weight's data_ptr, its slices, the bias's slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if (self.mode == "plain" or torch.is_grad_enabled() or x.numel() > DECODE_ROWS * self.in_features
                or torch.compiler.is_compiling() or not w.is_cpu):
            return F.linear(x, w, b)
        views = self._views
        if views is None or views[0] != w.data_ptr():  # built once; again only if the weight was moved or cast
            views = self._views = (w.data_ptr(), *split_views(w, b, self.mode, self.parts))
        y = split_product(x.reshape(-1, self.in_features), views[1], views[2], b, self.mode)
        return y.view(*x.shape[:-1], self.out_features)


def split_views(w: torch.Tensor, b: torch.Tensor | None, mode: str, parts: int):
    """The weight (out, in) as `parts` slices, views only: rows -> (parts, in, out/parts) and the bias
    (parts, 1, out/parts); inputs (w column-major) -> (parts, in/parts, out)."""
    n_out, n_in = w.shape
    if mode == "rows":
        slices = w.view(parts, n_out // parts, n_in).transpose(1, 2)
        return slices, None if b is None else b.view(parts, 1, n_out // parts)
    return w.t().view(parts, n_in // parts, n_out), None


def split_product(x: torch.Tensor, slices: torch.Tensor, bias_slices: torch.Tensor | None,
                  bias: torch.Tensor | None, mode: str) -> torch.Tensor:
    """x (rows, in) times the split weight -> (rows, out)."""
    parts, rows = slices.size(0), x.size(0)
    if mode == "rows":  # every part multiplies all of x by its slice of the output rows
        xs = x.unsqueeze(0).expand(parts, rows, x.size(1))
        y = torch.bmm(xs, slices) if bias_slices is None else torch.baddbmm(bias_slices, xs, slices)
        return y.transpose(0, 1).reshape(rows, -1)  # (parts, rows, out/parts) back in row order
    xs = x.view(rows, parts, -1).transpose(0, 1)  # (parts, rows, in/parts): part i of each row
    y = torch.bmm(xs, slices).sum(0)  # one partial product per block of input rows, summed
    return y if bias is None else y.add_(bias)


def column_major(w: torch.Tensor) -> torch.Tensor:
    """The same (out, in) values, their memory holding the transpose (in, out): a copy."""
    return w.t().contiguous().t()


PLANS = ("plain", "rows", "wide inputs")  # what use_fastest compares, each for the whole model


def mode_for(plan: str, shape: tuple[int, int], parts: int, dtype: torch.dtype) -> str:
    """One weight's path under a plan: "rows" splits every weight by its output rows; "wide inputs"
    stores the weights wider than long (Q/K/V, the FFN's expansion) column-major, split by input rows
    (memory along the longer side streams fastest), and the others by output rows."""
    n_out, n_in = shape
    if plan == "wide inputs" and n_out > n_in and n_in % parts == 0 and dtype in (torch.float32, torch.float64):
        return "inputs"  # 16-bit partial sums would each be rounded: those stay by rows
    if plan != "plain" and n_out % parts == 0:
        return "rows"
    return "plain"


@torch.inference_mode()
def use_fastest(model: nn.Module, parts: int | None = None) -> tuple[str, float]:
    """Make every nn.Linear of `model` a SplitLinear, in place, on the plan measured fastest on this
    machine (`PLANS`), for inference on a CPU; column-major weights keep their values and state dict.
    Returns (the plan, the share of a pass it saves over plain F.linear).

    What is timed is a pass over all the model's projections in order, one row each, as a decode
    step makes it, so the weights come from wherever a real step finds them (cache for a small
    model, RAM for a large one). The plans are compared whole: a split's threads and the BLAS's own
    interfere, so one weight's gain cannot be measured alone. A plan must save MIN_SAVING of the
    pass to be taken over plain F.linear."""
    parts = parts or torch.get_num_threads()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in linears:
        m.__class__ = SplitLinear
    if parts < 2 or not linears or linears[0].weight.device.type != "cpu":
        return "plain", 0.0
    trained = [m.weight.data for m in linears]
    inputs = [torch.randn(1, m.in_features, dtype=m.weight.dtype) for m in linears]

    def apply(plan: str) -> None:
        for m, w in zip(linears, trained, strict=True):
            m.mode, m.parts, m._views = mode_for(plan, tuple(w.shape), parts, w.dtype), parts, None
            m.weight.data = column_major(w) if m.mode == "inputs" else w

    def one_pass() -> float:
        best = float("inf")
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            for m, x in zip(linears, inputs, strict=True):
                m(x)
            best = min(best, time.perf_counter() - t0)
        return best

    seconds = {}
    for plan in PLANS:
        apply(plan)
        one_pass()  # warm up: views, thread pools
        seconds[plan] = one_pass()
    best, saving = pick(seconds)
    apply(best)
    return best, saving


def pick(seconds: dict[str, float]) -> tuple[str, float]:
    """The fastest plan and the share of plain's time it saves; plain unless that is MIN_SAVING."""
    best = min(seconds, key=seconds.get)
    saving = 1 - seconds[best] / seconds["plain"]
    return (best, saving) if saving >= MIN_SAVING else ("plain", 0.0)
