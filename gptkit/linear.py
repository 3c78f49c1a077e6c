"""The model's projections: `nn.Linear`, plus a path that spreads a decode step over the CPU's threads.

At batch 1 each new token multiplies one row by every weight matrix: matrix-vector products that
read all the weights once per token. MKL runs each on a single core, whatever torch's thread count,
so on a CPU `Linear` cuts the weight's output rows into one slice per thread and multiplies the
slices as one batch (`bmm` spreads a batch over the threads). Everything else is `nn.Linear`'s:
the same parameters and state-dict names, and `F.linear` for training, GPUs and long inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DECODE_ROWS = 64  # Linear's split path serves up to this many rows (decode steps, short prompts)


class Linear(nn.Linear):
    """nn.Linear, plus one path for decoding on a multi-core CPU.

    A decode step multiplies a few rows (one new token per sample) by each weight: a
    matrix-vector product, which MKL runs on one core however many threads torch has, so a
    batch-1 token on 2 cores took as long as on one. Here the weight's rows are cut into one
    slice per thread and multiplied as a batch (`bmm` runs the slices in parallel), with no copy
    of the weight. The result is the same to fp32 rounding. Training (autograd), compiled graphs,
    GPUs and long inputs take the ordinary `F.linear`.
    """

    _slices: SplitWeight | None = None  # kept between calls while the weight stays put

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the cheap tests first: this runs for every projection of every token
        if not torch.is_grad_enabled() and x.is_cpu and x.numel() <= DECODE_ROWS * self.in_features \
                and not torch.compiler.is_compiling():
            parts = torch.get_num_threads()
            if parts > 1:
                split = self._slices
                if split is None or not split.fits(self.weight, self.bias, parts):
                    split = self._slices = SplitWeight(self.weight, self.bias, parts)
                return split(x)
        return F.linear(x, self.weight, self.bias)


class SplitWeight:
    """A weight (out, in) seen as `parts` slices of its output rows, (parts, in, out/parts), and its
    bias as (parts, 1, out/parts): views, no copies. Rows left over when `parts` does not divide the
    width are multiplied on their own."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> None:
        n_out, n_in = weight.shape
        self.key = self.key_of(weight, bias, parts)
        self.parts, self.n_in, self.n_out = parts, n_in, n_out
        per = n_out // parts
        self.even = parts * per
        self.weight, self.bias = weight, bias
        usable = per > 0 and weight.is_contiguous()  # a strided weight has no slice views: F.linear
        self.slices = weight[:self.even].view(parts, per, n_in).transpose(1, 2) if usable else None
        self.bias_slices = bias[:self.even].view(parts, 1, per) if usable and bias is not None else None

    @staticmethod
    def key_of(weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> tuple:
        """What the views depend on: the thread count, and where and how the tensors are stored."""
        return (parts, weight.data_ptr(), weight.stride(), weight.dtype, None if bias is None else bias.data_ptr())

    def fits(self, weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> bool:
        return self.key == self.key_of(weight, bias, parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.slices is None:
            return F.linear(x, self.weight, self.bias)
        rows = x.numel() // self.n_in
        xs = x.reshape(1, rows, self.n_in).expand(self.parts, rows, self.n_in)
        if self.bias_slices is None:
            y = torch.bmm(xs, self.slices)  # (parts, rows, out/parts)
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
