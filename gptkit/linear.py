"""The model's projections: `nn.Linear`, plus a path that spreads a decode step over the CPU's threads.

At batch 1 each new token multiplies one row by every weight matrix: matrix-vector products that
read all the weights once per token, so their speed is how fast the weights stream from memory.
On an AMD CPU MKL runs each on a single core, whatever torch's thread count, so there `Linear` cuts the
weight into one slice per thread and multiplies the slices as one batch (`bmm` spreads a batch over
the threads), with no copy of the weight. How it cuts depends on how the weight lies in memory:

- row-major, nn.Linear's own layout (as trained): into slices of its output rows;
- column-major (the same (out, in) tensor, its memory holding the transpose (in, out)): into
  blocks of its input rows, each one contiguous stretch of memory, whose partial products are added.

MKL streams a weight fastest when its memory runs along the weight's longer side (benchmarks/sample.py
measures it per shape). On a 2-core AMD EPYC (32 MB L3), weights streamed from RAM: a 384->1536
projection at 29.5 GB/s column-major vs 18.6 row-major on two cores (18.5 vs 10.4 on one), a
1536->384 one at 25.1 GB/s row-major vs 17.7 column-major. So `decode_layout(model)`, which
`gptkit sample` applies on a CPU, stores the weights wider than they are long column-major.

That is AMD's case (MKL takes a generic path there). On an Intel CPU MKL spreads a matrix-vector
product over torch's threads itself, and reads row-major weights fastest: on a 2-core Intel Xeon
(Emerald Rapids), weights from its 260 MB L3, F.linear on row-major weights streamed a 384->1536
projection at 49.5 GB/s, against 45.8 split and 43.7 column-major, and a whole `baby` decode step
took 1.46 ms against 1.55 split. So where `SPLIT` is False (MKL on an Intel CPU) `Linear` is plain
`nn.Linear` and `decode_layout` leaves the weights as trained. Other CPUs keep the split, the layout
measured faster where a product runs on one core.

Everything else is `nn.Linear`'s: the same parameters and state-dict names, and `F.linear` for
training, GPUs and long inputs. A compiled decode step on a CPU (`torch.compile`) traces the split
into its graph.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

DECODE_ROWS = 64  # Linear's split path serves up to this many rows (decode steps, short prompts)
SPLIT_MIN = 1 << 16  # weights with fewer elements take F.linear: one core streams them faster than a split starts
FULL_PRECISION = (torch.float32, torch.float64)  # weights whose column-major blocks are summed as partials


def cpu_vendor() -> str:
    """The CPU's vendor as the kernel reports it (GenuineIntel, AuthenticAMD, ...); "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


@functools.cache
def blas_threads_gemv() -> bool:
    """Whether torch's BLAS spreads a one-row product over torch's threads by itself: MKL does on an
    Intel CPU (see the module docstring). Decided by the machine, not measured at start, so that a
    given machine always takes the same path and a seed the same text."""
    return torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel"


SPLIT = not blas_threads_gemv()  # whether decode steps split products across threads (tests set it)


class Linear(nn.Linear):
    """nn.Linear, plus one path for decoding on a multi-core CPU.

    A decode step multiplies a few rows (one new token per sample) by each weight: a
    matrix-vector product, which MKL runs on one core however many threads torch has on an AMD
    CPU, so a batch-1 token on 2 cores took as long as on one. Here the weight is cut into one slice
    per thread and the slices are multiplied as a batch (`bmm` runs them in parallel), with no copy
    of the weight (see `SplitWeight`). The result is the same to fp32 rounding. A compiled CPU decode
    step traces the same split into its graph. Training (autograd), GPUs, long inputs, and every
    input where `SPLIT` is False (MKL on an Intel CPU threads the product itself) take the
    ordinary `F.linear`.
    """

    _slices: SplitWeight | None = None  # kept between calls while the weight stays put
    _slices_key: tuple | None = None  # SplitWeight.key_of what _slices was made from
    compiled_parts = 1  # the split a compiled graph traces (1: none); `trace_split` sets it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the cheap tests first: this runs for every projection of every token
        if SPLIT and not torch.is_grad_enabled() and x.is_cpu and x.numel() <= DECODE_ROWS * self.in_features:
            if torch.compiler.is_compiling():  # traced into the graph, where the views cost nothing
                if self.compiled_parts > 1:
                    return SplitWeight(self.weight, self.bias, self.compiled_parts)(x)
            else:
                parts = torch.get_num_threads()
                if parts > 1:
                    # the parameters from their dict: `self.weight` goes through nn.Module.__getattr__,
                    # ~1.5 µs here, which twice per projection was ~5% of a decode step
                    weight, bias = self._parameters["weight"], self._parameters["bias"]
                    key = SplitWeight.key_of(weight, bias, parts)
                    if key != self._slices_key:
                        self._slices, self._slices_key = SplitWeight(weight, bias, parts), key
                    return self._slices(x)
        params = self._parameters  # see above: `self.weight` costs more than the rest of this call
        return F.linear(x, params["weight"], params["bias"])


def trace_split() -> None:
    """Called where gptkit compiles: the graphs traced from now on split each decode product into
    torch's current thread count of parts, a constant in the graph (a compiled graph cannot ask
    torch for its thread count); none where `SPLIT` is False."""
    Linear.compiled_parts = torch.get_num_threads() if SPLIT else 1


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.bmm. In a compiled graph a baddbmm with beta=0, the same product: inductor keeps that
    as MKL's kernel, where it lowers a one-row bmm on a CPU to loops of its own, slower here."""
    if torch.compiler.is_compiling():
        return torch.baddbmm(a.new_zeros(1, 1, 1), a, b, beta=0)
    return torch.bmm(a, b)


def decode_layout(model: nn.Module) -> nn.Module:
    """Store each `Linear` weight of `model` wider than it is long (out > in: Q/K/V, the FFN's
    expansion, a vocabulary-wide lm_head) column-major, in place, for faster decoding on a CPU (see
    the module docstring): same shapes, values, parameter names and state dict; only the memory
    order changes. Meant for inference: `gptkit sample` calls it after loading a checkpoint.
    A tied weight (lm_head = wte) is laid out once, for both. 16-bit weights are left as they are
    (`SplitWeight` would round their partial sums). Checkpoints are still written row-major
    (`checkpoint` saves contiguous tensors). Where decode steps do not split (`SPLIT` False: MKL on
    an Intel CPU, fastest on row-major weights) the weights stay as trained. Returns the model."""
    if not SPLIT:
        return model
    for module in model.modules():
        w = module.weight if isinstance(module, Linear) else None
        if w is not None and w.is_contiguous() and module.out_features > module.in_features \
                and w.dtype in FULL_PRECISION:
            w.data = column_major(w.data)
    return model


def column_major(weight: torch.Tensor) -> torch.Tensor:
    """The same (out, in) values, their memory holding the transpose (in, out): a copy."""
    return weight.t().contiguous().t()


class SplitWeight:
    """A weight (out, in) and its bias seen as `parts` slices multiplied as one batch: views, no copies.

    Row-major weight: slices of its output rows, (parts, in, out/parts), the bias as (parts, 1,
    out/parts); rows left over when `parts` does not divide the width are multiplied on their own.
    Column-major weight (`decode_layout`): blocks of its input rows, (parts, in/parts, out), each
    multiplied by its part of the input and the partial products added (the sum is split in
    `parts`, so the last bits differ from F.linear's); F.linear when `parts` does not divide `in`,
    and for 16-bit weights (whose partial sums would each be rounded to 16 bits).
    Weights under SPLIT_MIN elements (256 KB in fp32) always take F.linear: on this project's CPU a
    384x65 one took 7 µs on one core and 37 µs split in two.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> None:
        n_out, n_in = weight.shape
        self.parts, self.n_in, self.n_out = parts, n_in, n_out
        self.weight, self.bias = weight, bias
        self.by_input = False
        self.slices = self.bias_slices = None  # None: F.linear
        per = n_out // parts
        self.even = parts * per
        if weight.numel() < SPLIT_MIN:
            pass  # a small weight (a character vocabulary's lm_head): F.linear
        elif weight.is_contiguous():
            if per > 0:
                self.slices = weight[:self.even].view(parts, per, n_in).transpose(1, 2)
                self.bias_slices = bias[:self.even].view(parts, 1, per) if bias is not None else None
        elif weight.t().is_contiguous() and n_in % parts == 0 and weight.dtype in FULL_PRECISION:
            self.by_input = True
            self.slices = weight.t().view(parts, n_in // parts, n_out)

    @staticmethod
    def key_of(weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> tuple:
        """What the views depend on: the thread count, and where and how the tensors are stored."""
        return (parts, weight.data_ptr(), weight.stride(), weight.dtype, None if bias is None else bias.data_ptr())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.slices is None:
            return F.linear(x, self.weight, self.bias)
        rows = x.numel() // self.n_in
        if self.by_input:
            return self._by_input(x, rows)
        xs = x.reshape(1, rows, self.n_in).expand(self.parts, rows, self.n_in)
        if self.bias_slices is None:
            y = bmm(xs, self.slices)  # (parts, rows, out/parts)
        else:
            y = torch.baddbmm(self.bias_slices, xs, self.slices)
        if self.even == self.n_out and rows == 1:
            return y.view(*x.shape[:-1], self.n_out)  # one row: the slices already lie in order
        y = y.transpose(0, 1).reshape(rows, self.even)  # back in row order
        if self.even < self.n_out:  # the rows left over when the width does not divide evenly
            rest = F.linear(x.reshape(rows, self.n_in), self.weight[self.even:],
                            None if self.bias is None else self.bias[self.even:])
            y = torch.cat([y, rest], dim=1)
        return y.view(*x.shape[:-1], self.n_out)

    def _by_input(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """Column-major: part i of each input row times block i of the weight, summed over i."""
        # (parts, rows, in/parts); for one row a single view (each small op costs ~1-2 µs here)
        xs = x.reshape(self.parts, 1, -1) if rows == 1 else x.reshape(rows, self.parts, -1).transpose(0, 1)
        out = bmm(xs, self.slices).sum(0)  # (parts, rows, out): one partial product per block, summed
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.n_out)
