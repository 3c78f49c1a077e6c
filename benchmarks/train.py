"""Training benchmarks, each a ratio measured in one run against a baseline run the same way.

1. quality per second (char-level tinyshakespeare, validation = last 10%):
   baseline = nanoGPT's published CPU recipe reproduced as a gptkit config (4 layers, 4 heads,
   128 dims, block 64, batch 12, lr 1e-3, 2000 iters, dropout 0, warmup + cosine, fp32, eval every
   250 steps on 20 batches); then gptkit's default CPU settings get the same wall time.
   quality_ratio = baseline time to reach gptkit's final val loss / gptkit's time. On a CPU the
   defaults are the `quick` preset: tiny's shape with rotary positions, Muon, batch 32, lr 3e-3.
2. throughput, the `baby` preset as a user runs it: `gptkit train tinyshakespeare.txt --preset baby`
   in a child process, no other flag, stopped with Ctrl-C (SIGINT: it finishes its step, evaluates,
   saves and exits) after --seconds; tokens/s = the checkpoint's tokens seen / its training time, and
   the child's own peak RSS. Baseline = nanoGPT's way on the same config, in a child process for the
   same wall time: fp32, dropout 0.2 on the attention probabilities (which forces the T×T attention
   path), one 64-sequence batch a step, the per-parameter AdamW loop. Targets: >= 1.5x, <= 2 GiB.

    python benchmarks/train.py                 # both (about 6 minutes on 2 cores)
    python benchmarks/train.py --only quality  # or: --only throughput [--seconds 90] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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


def baseline_child(seconds: float) -> None:
    """nanoGPT's way at the `baby` config, in a fresh process; steps until `seconds` have passed, the
    first one included (as in gptkit's count). Prints one JSON line."""
    import numpy as np
    import torch

    from gptkit.config import resolve_config
    from gptkit.data.dataset import get_batch
    from gptkit.model import GPT
    from gptkit.optim import adamw_groups

    mc, tc = resolve_config("baby", None, {})
    mc.vocab_size = 65
    torch.manual_seed(0)
    model = GPT(mc)
    for block in model.transformer.h:  # the T×T path nanoGPT falls onto on CPU with dropout > 0
        block.attn.forward = types.MethodType(textbook_attention, block.attn)
    model.train()
    opt = torch.optim.AdamW(adamw_groups(list(model.parameters()), tc.weight_decay), lr=tc.learning_rate,
                            betas=(tc.beta1, tc.beta2))  # nanoGPT: unfused on CPU
    data = np.frombuffer(DATA.read_bytes(), dtype=np.uint8) % 65  # text-like ids; the speed is what counts
    rng = np.random.default_rng(0)
    batch = tc.tokens_per_step // mc.block_size  # 64 sequences, one batch
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x, y = get_batch(data, batch, mc.block_size, rng)
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps += 1
    print(json.dumps({"tokens_per_sec": steps * batch * mc.block_size / (time.perf_counter() - t0), "steps": steps}))


def run_child(cmd: list[str], seconds: float | None, store: Path) -> tuple[int, dict]:
    """Run `cmd`; with `seconds`, press Ctrl-C once the run has trained that long. Returns (exit code,
    the child's rusage as a dict)."""
    out_path, err_path = store / "child.out", store / "child.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:  # files: a full pipe cannot stall the child
        proc = subprocess.Popen(cmd, cwd=store, stdout=out, stderr=err, env={**os.environ, "NO_COLOR": "1"})
    deadline, pressed = None, False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # this child's own peak RSS, not the largest so far
        if pid:
            break
        if seconds is not None and deadline is None and (store / "r" / "data" / "meta.json").exists():
            deadline = time.time() + seconds + 5  # ~5 s of set-up after the data is built
        if deadline is not None and not pressed and time.time() > deadline:
            proc.send_signal(signal.SIGINT)
            pressed = True
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, {"rss": usage.ru_maxrss * 1024, "stdout": out_path.read_text(),
                             "stderr": err_path.read_text()}


def throughput(seconds: float, record: bool) -> None:
    print(f"throughput: the baby preset as shipped (6/6/384, block 256, 16,384 tokens a step), CPU, {seconds:.0f} s",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        code, base = run_child([sys.executable, __file__, "--child", "baseline", "--seconds", str(seconds)], None,
                               store)
        assert code == 0, base["stderr"][-2000:]
        b = json.loads(base["stdout"].strip().splitlines()[-1])
        print(f"  nanoGPT's way: {b['tokens_per_sec']:8.0f} tokens/s, peak RSS {base['rss'] / 2**30:.2f} GiB "
              f"({b['steps']} steps)", flush=True)
        cmd = [sys.executable, "-m", "gptkit", "train", str(DATA), "--preset", "baby", "--run", "r",
               "--store", str(store)]
        code, ours = run_child(cmd, seconds, store)
        assert code in (0, 130), ours["stderr"][-2000:]
        from gptkit.checkpoint import LAST, read_info

        state = read_info(store / "r" / LAST).state
        start = json.loads((store / "r" / "metrics.jsonl").read_text().splitlines()[0])
    tps = state["tokens_seen"] / state["elapsed"]
    print(f"  gptkit train --preset baby: {tps:8.0f} tokens/s, peak RSS {ours['rss'] / 2**30:.2f} GiB "
          f"({state['step']} steps of {start['grad_accum']} x {start['batch_size']} sequences, {start['dtype']}"
          f"{', ' + start['dtype_note'] if start.get('dtype_note') else ''})", flush=True)
    ratio, rss = tps / b["tokens_per_sec"], ours["rss"] / 2**30
    print(f"throughput_ratio = {ratio:.2f}  (target >= 1.5)")
    print(f"peak RSS = {rss:.2f} GiB, nanoGPT's way {base['rss'] / 2**30:.2f} GiB  (target <= 2 GiB)")
    if record:
        from results import record as append

        append("train.py --only throughput (the baby preset as shipped, CPU)",
               {"gptkit tok/s": round(tps), "nanoGPT tok/s": round(b["tokens_per_sec"]), "ratio": round(ratio, 2),
                "gptkit RSS GiB": round(rss, 2), "nanoGPT RSS GiB": round(base["rss"] / 2**30, 2),
                "micro-batch": f"{start['grad_accum']}x{start['batch_size']}", "dtype": start["dtype"]},
               note=f"{seconds:.0f} s each")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["quality", "throughput"])
    ap.add_argument("--seconds", type=float, default=90, help="training time of each throughput run")
    ap.add_argument("--record", action="store_true", help="append the throughput figures to benchmarks/results.jsonl")
    ap.add_argument("--child", choices=["baseline"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        baseline_child(args.seconds)
        return
    print(f"machine: {os.cpu_count()} CPU cores, torch threads as default", flush=True)
    if args.only in (None, "throughput"):
        throughput(args.seconds, args.record)
    if args.only in (None, "quality"):
        with tempfile.TemporaryDirectory() as tmp:
            quality(Path(tmp))


if __name__ == "__main__":
    main()
