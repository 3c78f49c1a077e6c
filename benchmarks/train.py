"""Training benchmarks, each a ratio measured in one run against a baseline run the same way.

1. quality per second (char-level tinyshakespeare, validation = last 10%):
   baseline = nanoGPT's published CPU recipe reproduced as a gptkit config (4 layers, 4 heads,
   128 dims, block 64, batch 12, lr 1e-3, 2000 iters, dropout 0, warmup + cosine, fp32, eval every
   250 steps on 20 batches); then gptkit's default CPU settings get the same wall time.
   quality_ratio = baseline time to reach gptkit's final val loss / gptkit's time. On a CPU the
   defaults are the `quick` preset: tiny's shape with rotary positions, Muon, batch 32, lr 3e-3.
2. throughput on the `baby` dims (6 layers, 6 heads, 384 dims, block 256, batch 64): tokens/s and
   peak RSS, each in a fresh process. Baseline = nanoGPT's way on CPU: fp32, dropout 0.2 applied to
   the attention probabilities (which forces the T×T attention path), one 64-sequence batch, the
   per-parameter AdamW loop. gptkit: 4 micro-batches of 16 (the same gradient), fused SDPA and AdamW.

    python benchmarks/train.py                 # both (about 5 minutes on 2 cores)
    python benchmarks/train.py --only quality  # or: --only throughput
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(ROOT))

# every setting spelled out, so the baseline cannot drift with gptkit's defaults or presets
NANOGPT_RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, learning_rate=1e-3,
                      min_lr=1e-4, max_iters=2000, warmup_iters=100, dropout=0.0, beta2=0.99, eval_interval=250,
                      eval_iters=20, dtype="float32", tokenizer="char", pos_encoding="learned", norm="layernorm",
                      mlp="gelu", bias=True, optimizer="adamw", weight_decay=0.1, grad_clip=1.0, grad_accum=1)


def run_curve(preset: str | None, overrides: dict, store: Path, name: str) -> tuple[list[tuple[float, float]], float]:
    """Train for real; return [(wall seconds, val loss)] at each evaluation and the total wall time."""
    from gptkit.config import resolve_config
    from gptkit.train import train

    mc, tc = resolve_config(preset, None, overrides)
    points: list[tuple[float, float]] = []
    t0 = time.perf_counter()

    def on_event(e: dict) -> None:
        if e["event"] == "eval":
            points.append((time.perf_counter() - t0, e["val_loss"]))

    train(mc, tc, str(DATA), store / name, store, on_event=on_event)
    return points, time.perf_counter() - t0


def time_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """First time the curve reaches `target`, interpolating linearly between evaluations."""
    prev = (0.0, float("inf"))
    for t, loss in points:
        if loss <= target:
            if prev[1] == float("inf"):
                return t
            frac = (prev[1] - target) / (prev[1] - loss)
            return prev[0] + frac * (t - prev[0])
        prev = (t, loss)
    return None


def quality(store: Path) -> None:
    print("quality per second: char-level tinyshakespeare, val = last 10%", flush=True)
    base_pts, base_time = run_curve("tiny", NANOGPT_RECIPE, store, "baseline")
    print(f"  baseline (nanoGPT CPU recipe): val {base_pts[-1][1]:.4f} in {base_time:.1f} s  curve: "
          + ", ".join(f"{t:.0f}s:{v:.3f}" for t, v in base_pts), flush=True)
    ours_pts, ours_time = run_curve(None, {"max_time": base_time, "tokenizer": "char"}, store, "gptkit")
    final = ours_pts[-1][1]
    print(f"  gptkit defaults (same wall time): val {final:.4f} in {ours_time:.1f} s  curve: "
          + ", ".join(f"{t:.0f}s:{v:.3f}" for t, v in ours_pts), flush=True)
    reach = time_to_reach(base_pts, final)
    if reach is None:
        print(f"quality_ratio: unbounded (the baseline's run ended at {min(v for _, v in base_pts):.4f} and never "
              f"reached gptkit's {final:.4f}; see time_ratio)")
    else:
        print(f"quality_ratio = {reach / ours_time:.2f}  (baseline reached {final:.4f} after {reach:.1f} s)")
    ours_reach = time_to_reach(ours_pts, base_pts[-1][1])
    if ours_reach:
        print(f"time_ratio = {base_time / ours_reach:.2f}  (gptkit reached the baseline's final "
              f"{base_pts[-1][1]:.4f} after {ours_reach:.1f} s, the baseline after {base_time:.1f} s)")
    print(f"target: gptkit final val <= 1.70 nats/char -> {'met' if final <= 1.70 else 'NOT met'} ({final:.4f})")


def textbook_attention(self, x, rope=None, kv_cache=None, input_pos=None):
    """CausalSelfAttention.forward through the masked softmax (nanoGPT's path on CPU with dropout)."""
    from gptkit.model import manual_attention

    q, k, v = self.heads(x, rope)
    return self.merge(manual_attention(q, k, v)[0])


def throughput_child(kind: str, steps: int) -> None:
    """Runs in a fresh process so its peak RSS is its own. Prints one JSON line."""
    import numpy as np
    import torch

    from gptkit import runtime
    from gptkit.config import resolve_config
    from gptkit.data.dataset import get_batch
    from gptkit.model import GPT
    from gptkit.optim import adamw_groups, make_optimizer

    mc, tc = resolve_config("baby", None, {"vocab_size": None})
    mc.vocab_size = 65
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = GPT(mc)
    if kind == "baseline":
        dtype, micro, accum = torch.float32, 64, 1
        for block in model.transformer.h:  # the T×T path nanoGPT falls onto on CPU with dropout > 0
            block.attn.forward = types.MethodType(textbook_attention, block.attn)
    else:
        # gptkit on CPU: the same 64 sequences per step as 4 micro-batches of 16 (--batch-size 16
        # --grad-accum 4: the same gradient, a quarter of the activation memory), fused SDPA, fused AdamW
        dtype, micro, accum = runtime.pick_dtype(tc.dtype, device), 16, 4
    assert micro * accum == 64, "the benchmark compares 64 sequences per optimizer step"
    model.train()
    opt = make_optimizer(model, tc, device) if kind == "gptkit" else torch.optim.AdamW(
        adamw_groups(list(model.parameters()), tc.weight_decay), lr=tc.learning_rate,
        betas=(tc.beta1, tc.beta2))  # nanoGPT: unfused on CPU
    data = np.random.default_rng(0).integers(0, 65, 200_000).astype(np.uint16)
    rng = np.random.default_rng(0)

    def step() -> None:
        for _ in range(accum):
            x, y = get_batch(data, micro, mc.block_size, rng)
            with runtime.autocast(device, dtype):
                _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"tokens_per_sec": steps * micro * accum * mc.block_size / dt, "rss": rss,
                      "dtype": str(dtype), "micro_batch": micro}))


def throughput(steps: int) -> None:
    print("throughput: baby dims (6/6/384, block 256, batch 64), vocab 65, CPU", flush=True)
    results = {}
    for kind in ("baseline", "gptkit"):
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--steps", str(steps)],
                             capture_output=True, text=True, check=True)
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[kind]
        print(f"  {kind:8s}: {r['tokens_per_sec']:8.0f} tokens/s, peak RSS {r['rss'] / 2**30:.2f} GiB "
              f"({r['dtype']}, micro-batch {r['micro_batch']})", flush=True)
    b, g = results["baseline"], results["gptkit"]
    print(f"throughput_ratio = {g['tokens_per_sec'] / b['tokens_per_sec']:.2f}  (target >= 1.5)")
    print(f"rss_ratio = {g['rss'] / b['rss']:.2f}  (gptkit peak RSS {g['rss'] / 2**30:.2f} GiB; target <= 2 GiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["quality", "throughput"])
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per throughput run")
    ap.add_argument("--child", choices=["baseline", "gptkit"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        throughput_child(args.child, args.steps)
        return
    print(f"machine: {os.cpu_count()} CPU cores, torch threads as default", flush=True)
    if args.only in (None, "throughput"):
        throughput(args.steps)
    if args.only in (None, "quality"):
        with tempfile.TemporaryDirectory() as tmp:
            quality(Path(tmp))


if __name__ == "__main__":
    main()
