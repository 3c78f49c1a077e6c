"""The GPU check: one prepared script, about five minutes on one H100/H200, one JSON line per check.

Every line is {"check", "pass", "rule", "seconds", ...figures}; "pass" is true, false, or null where
the rule does not apply (a CPU dry run) or the check was skipped for time. The last line sums up;
the exit status is 1 when any check failed. It drives gptkit as the CLI does (`train.train`, the
`Engine`, `runtime`, `hardware`, `memory`) and changes nothing in it.

    python benchmarks/gpu.py                      # every check in order, skipping what would overrun --budget
    python benchmarks/gpu.py --only user,decode   # some of them (the second call of a first GPU session)
    python benchmarks/gpu.py --dry-run            # the same harness on CPU: tiny shapes, dynamo's eager
                                                  # backend (no inductor compile); a test runs it
    python benchmarks/gpu.py --record             # also append each check's figures to results.jsonl

Checks: env (GPU, capability, toolchain) · decisions (dtype, compile, peak, MFU's FLOPs against torch's
flop counter, the gpt2 preset's tokens per step on 1/8/16 GPUs) · matmul (dense bf16 against the
table's peak) · train (the gpt2 preset as shipped, compiled then eager: step time, tokens/s, MFU
shown vs counted, peak memory, graph breaks) · sdpa (which attention kernel a train step runs, eager
and compiled, by profiler op names) · fp16 (the GradScaler path, forced) · decode (the CUDA-graph
step: compile time, tokens/s against eager, no recompiles, no cudagraph skips, greedy text equal to
eager, the window's re-prefill, an odd block size; on the user check's model when it ran first) ·
ddp (DDP over NCCL on one GPU, gptkit's DDP branch forced on, in a child process) · user (`gptkit
train` on tinyshakespeare with the CUDA default preset for 90 s, then `gptkit sample`, as a user
runs them). The estimates below add up to about seven minutes: the default --budget (290 s) runs
the first ones and skips the rest with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT / "tests" / "data" / "tiktoken"))  # the GPU machine is offline

import torch  # noqa: E402

from gptkit import checkpoint, hardware, memory, runtime  # noqa: E402
from gptkit.config import ModelConfig, resolve_config  # noqa: E402
from gptkit.model import GPT  # noqa: E402
from gptkit.train import batch_plan, flops_per_token, train  # noqa: E402

# seconds each check is expected to take on an H100 (compiles included): a check that would end
# past --budget is skipped, so a five-minute slot always returns lines
ESTIMATE = {"env": 2, "decisions": 10, "matmul": 5, "train": 150, "sdpa": 30, "user": 130, "decode": 45,
            "fp16": 15, "ddp": 35}
MFU_GOAL = 0.40  # issue 23: counted MFU at GPT-2 124M in bf16 on one H100/H200
VAL_GOAL = 1.50  # nats/char on tinyshakespeare within 90 s of training (nanoGPT: 1.4697 in ~3 min, A100)


class Harness:
    """The mode (real GPU or CPU dry run), its shapes, and where results go."""

    def __init__(self, dry: bool, work: Path) -> None:
        self.dry, self.work = dry, work
        self.device = torch.device("cpu") if dry else torch.device("cuda", 0)
        if dry:  # dynamo's eager backend: the graphs, guards and breaks are real, no inductor compile
            real = torch.compile

            def eager_compile(fn=None, **kw):
                return real(fn, backend="eager", dynamic=kw.get("dynamic"), fullgraph=kw.get("fullgraph", False))

            torch.compile = eager_compile
        self.gpt2 = {} if not dry else dict(n_layer=1, n_head=2, n_embd=32, block_size=32)
        self.cpu_small = dict(n_layer=1, n_head=2, n_embd=32, block_size=32)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def rule(self, real_pass: bool, dry_pass: bool | None = None) -> bool | None:
        return dry_pass if self.dry else real_pass


def dynamo_counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"unique_graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "cudagraph_skips": sum(v for k, v in counters["inductor"].items() if "cudagraph_skip" in k)}


def reset_dynamo() -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


# ---------------------------------------------------------------------------------------- checks
def check_env(h: Harness) -> dict[str, Any]:
    import sysconfig

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available(), "cc": shutil.which("cc") or shutil.which("gcc"),
                            "python_h": Path(sysconfig.get_paths()["include"], "Python.h").is_file(),
                            "missing_toolchain": runtime.missing_toolchain(h.device)}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available() and not h.dry:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gib=round(props.total_memory / 2**30, 1), nccl=str(torch.cuda.nccl.version()))
    ok = info["cuda_available"] and info["missing_toolchain"] is None
    return {"rule": "a CUDA GPU, and what inductor needs (Triton, a C compiler, Python.h)",
            "pass": h.rule(ok, info["missing_toolchain"] is None), **info}


def counted_flops(cfg: ModelConfig) -> float:
    """FLOPs per token of a forward and backward as torch.utils.flop_counter counts them (meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = GPT(cfg)
        idx = torch.randint(0, cfg.vocab_size, (1, cfg.block_size))
    counter = FlopCounterMode(display=False)
    with counter:
        model(idx, idx)[1].backward()
    return counter.get_total_flops() / idx.numel()


def check_decisions(h: Harness) -> dict[str, Any]:
    dtype = runtime.pick_dtype("auto", h.device)
    out: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch.")}
    mc, tc = resolve_config("gpt2", None, {}, device_type=h.device.type)
    mc.vocab_size = 50257
    with torch.device("meta"):
        meta = GPT(mc)
    out["mfu_scale"] = flops_per_token(meta, mc) / counted_flops(mc)  # 0.73 before issue 23
    plans = {}
    for world in (1, 8, 16):
        micro, accum = batch_plan(tc, mc, world, lambda n: memory.fit_micro_batch(mc, n, h.device, torch.bfloat16))
        plans[world] = micro * accum * mc.block_size * world
        out[f"gpt2_micro_x_accum_on_{world}"] = f"{micro}x{accum}"
    out["gpt2_tokens_per_step_on_1_8_16"] = list(plans.values())
    out["compile"] = runtime.want_compile(None, h.device) and runtime.missing_toolchain(h.device) is None
    ok = out["mfu_scale"] == 1.0 and all(v == 491_520 for v in plans.values())
    if h.dry:
        return {"rule": "MFU's FLOPs == the flop counter's; 491,520 tokens a step on 1/8/16 GPUs",
                "pass": ok and dtype == torch.float32, **out}
    native = hardware.native_bf16(h.device)
    peak = hardware.gpu_peak(torch.cuda.get_device_name(0))
    out.update(native_bf16=native, peak_tflops=None if peak is None else peak / 1e12)
    ok = ok and (dtype == torch.bfloat16) == native and peak is not None and out["compile"]
    return {"rule": "bf16 iff capability >= 8.0; a known peak; compile on; MFU's FLOPs == the flop counter's; "
                    "491,520 tokens a step on 1/8/16 GPUs", "pass": ok, **out}


def check_matmul(h: Harness) -> dict[str, Any]:
    n = 256 if h.dry else 8192
    dtype = torch.float32 if h.dry else torch.bfloat16
    a = torch.randn(n, n, device=h.device, dtype=dtype)
    b = torch.randn(n, n, device=h.device, dtype=dtype)
    for _ in range(3):
        a @ b
    h.sync()
    reps, t = 5 if h.dry else 30, time.perf_counter()
    for _ in range(reps):
        a @ b
    h.sync()
    tflops = 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
    peak = hardware.peak_flops(h.device, dtype)
    frac = tflops * 1e12 / peak if peak else None
    return {"rule": "dense bf16 matmul at 50-105% of the table's peak (above it: the table is wrong)",
            "pass": h.rule(frac is not None and 0.5 <= frac <= 1.05, math.isfinite(tflops)),
            "n": n, "tflops": round(tflops, 1), "fraction_of_peak": None if frac is None else round(frac, 3)}


def train_run(h: Harness, name: str, preset: str, overrides: dict[str, Any], data: Path = DATA,
              ) -> tuple[list[dict[str, Any]], Any, float]:
    """gptkit's own train() (as the CLI calls it); returns (events, result, seconds)."""
    mc, tc = resolve_config(preset, None, overrides, device_type=h.device.type)
    events: list[dict[str, Any]] = []
    t = time.perf_counter()
    result = train(mc, tc, str(data), h.work / name, h.work, on_event=events.append)
    return events, result, time.perf_counter() - t


def train_figures(events: list[dict[str, Any]], flops: float, peak: float | None) -> dict[str, Any]:
    start = next(e for e in events if e["event"] == "start")
    steps = [e for e in events if e["event"] == "step"]
    last = steps[-1]
    counted = last["tokens_per_sec"] * flops / peak if peak else None
    return {"micro_x_accum": f"{start['batch_size']}x{start['grad_accum']}", "tokens_per_step": start["tokens_per_step"],
            "compiled": start["compiled"], "dtype": start["dtype"], "step_s": round(last["step_time"], 4),
            "tokens_per_sec": round(last["tokens_per_sec"]), "mfu_shown": last["mfu"],
            "mfu_counted": counted, "loss_first_last": [steps[0]["loss"], last["loss"]],
            "warnings": [e["message"] for e in events if e["event"] == "warning"]}


def check_train(h: Harness) -> dict[str, Any]:
    """The gpt2 preset as shipped (its tokens per step, the fitted micro-batch, bf16, fused AdamW,
    flash), compiled and then eager: the first steady interval after step 1 is what is reported."""
    base = dict(max_iters=3 if h.dry else 8, eval_interval=10**6, eval_iters=1, warmup_iters=2, **h.gpt2)
    if h.dry:
        base.update(tokenizer="char", tokens_per_step=16 * 32)
    out: dict[str, Any] = {}
    for mode in ("compiled", "eager"):
        reset_dynamo()
        if h.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        steps = base["max_iters"] if mode == "compiled" or h.dry else 5  # eager has no compile to amortise
        events, result, seconds = train_run(h, f"gpt2-{mode}", "gpt2", {**base, "compile": mode == "compiled",
                                                                         "max_iters": steps})
        mc = resolve_config("gpt2", None, {**base}, device_type=h.device.type)[0]
        info = checkpoint.read_info(h.work / f"gpt2-{mode}" / checkpoint.LAST)
        mc.vocab_size = info.model_config.vocab_size
        start = next(e for e in events if e["event"] == "start")
        peak = hardware.peak_flops(h.device, getattr(torch, start["dtype"]))  # the run's own (a CPU's: measured)
        fig = train_figures(events, counted_flops(mc), peak)
        fig.update(dynamo_counters(), run_s=round(seconds, 1))
        if h.device.type == "cuda":
            fig["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        fig["first_step_s"] = round(next(e for e in events if e["event"] == "step")["step_time"], 2)
        out[mode] = fig
        shutil.rmtree(h.work / f"gpt2-{mode}", ignore_errors=True)  # 1.5 GB of checkpoint each
    c, e = out["compiled"], out["eager"]
    shown_ok = c["mfu_counted"] is None or abs(c["mfu_shown"] / c["mfu_counted"] - 1) < 0.02
    finite = all(math.isfinite(x) for f in (c, e) for x in f["loss_first_last"])
    ok = finite and c["graph_breaks"] == 0 and c["compiled"] and shown_ok and c["tokens_per_sec"] > e["tokens_per_sec"]
    mfu = c["mfu_counted"]
    return {"rule": "finite losses, 0 graph breaks, compiled faster than eager, MFU shown == counted",
            "pass": h.rule(ok, finite and c["graph_breaks"] == 0), "mfu_goal": MFU_GOAL,
            "mfu_goal_met": None if mfu is None or h.dry else mfu >= MFU_GOAL,
            "speedup_compiled": round(c["tokens_per_sec"] / e["tokens_per_sec"], 2), **out}


FUSED = ("flash", "cudnn", "efficient", "fmha")


def attention_ops(h: Harness, model: torch.nn.Module, idx: torch.Tensor, dtype: torch.dtype) -> list[str]:
    """The op and kernel names with attention in them that one training forward and backward runs."""
    from torch.profiler import ProfilerActivity, profile

    def step() -> None:
        with runtime.autocast(h.device, dtype):
            _, loss = model(idx, idx)
        loss.backward()

    step()  # compile and warm up outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if h.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        h.sync()
    names = {e.name for e in prof.events()}
    return sorted(n for n in names if any(k in n.lower() for k in ("attention", "attn", "sdpa", *FUSED)))


def check_sdpa(h: Harness) -> dict[str, Any]:
    """Which kernel the train step's attention runs: GPT-2's shapes (12 heads of 64, T 1024) on a
    2-layer model (the choice depends on the attention's shapes and dtype, not on depth)."""
    cfg = ModelConfig(**(h.cpu_small if h.dry else dict(n_layer=2, n_head=12, n_embd=768, block_size=1024)),
                      vocab_size=50257)
    dtype = runtime.pick_dtype("auto", h.device)
    torch.manual_seed(0)
    model = GPT(cfg).to(h.device)
    idx = torch.randint(0, cfg.vocab_size, (4, cfg.block_size), device=h.device)
    out: dict[str, Any] = {"probe": hardware.sdpa_fallback(h.device, dtype, (4, cfg.n_head, cfg.block_size,
                                                                             cfg.head_dim))}
    backends = {}
    if h.device.type == "cuda":
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q = torch.randn(4, cfg.n_head, cfg.block_size, cfg.head_dim, device=h.device, dtype=dtype)
        for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel([b]):
                    F.scaled_dot_product_attention(q, q, q, is_causal=True)
                backends[b.name] = "ok"
            except RuntimeError as e:
                backends[b.name] = str(e).splitlines()[0][:120]
    out["backends"] = backends
    reset_dynamo()
    out["eager_ops"] = attention_ops(h, model, idx, dtype)
    compiled, _ = runtime.compile_model(model, h.device)
    out["compiled_ops"] = attention_ops(h, compiled, idx, dtype)

    def fused(ops: list[str]) -> bool:
        return any(k in op.lower() for op in ops for k in FUSED) and not any("math" in op.lower() for op in ops)

    return {"rule": "a fused attention op (flash, cuDNN or memory-efficient) and no math kernel, eager and compiled",
            "pass": fused(out["eager_ops"]) and fused(out["compiled_ops"]) and out["probe"] is None, **out}


def cli(cwd: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gptkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def check_user(h: Harness) -> dict[str, Any]:
    """`gptkit train tinyshakespeare.txt` with the CUDA default preset (baby) for 90 s, then `gptkit
    sample -n 500 --stats -v`, as a user runs them; the run is kept for the decode check."""
    store = str(h.work / "store")
    budget = ["--preset", "tiny", "--n-layer", "1", "--n-embd", "32", "--block-size", "32", "--max-iters", "6",
              "--eval-interval", "3", "--eval-iters", "1"] if h.dry else ["--max-time", "90s"]
    t = time.perf_counter()
    trained = cli(h.work, "train", str(DATA), "--run", "shakespeare", "--store", store, *budget, timeout=600)
    train_s = time.perf_counter() - t
    out: dict[str, Any] = {"train_exit": trained.returncode, "train_s": round(train_s, 1),
                           "train_tail": trained.stderr.strip().splitlines()[-3:]}
    last = Path(store) / "shakespeare" / checkpoint.LAST
    if trained.returncode == 0 and last.is_file():
        state = checkpoint.read_info(last).state
        out.update(step=state["step"], val_loss=state["val_loss"], trained_s=round(state["elapsed"], 1),
                   tokens_per_sec=round(state["tokens_seen"] / state["elapsed"]))
    sampled = cli(h.work, "sample", "-c", "shakespeare", "--store", store, "--prompt", "ROMEO:",
                  "-n", "50" if h.dry else "500",
                  "--stats", "-v", "--seed", "1", timeout=300)
    out.update(sample_exit=sampled.returncode, sample_stderr=sampled.stderr.strip().splitlines()[-3:],
               sample_chars=len(sampled.stdout))
    ok = trained.returncode == 0 and sampled.returncode == 0 and "val_loss" in out
    return {"rule": f"both exit 0; val <= {VAL_GOAL} nats/char within 90 s of training",
            "pass": h.rule(ok and out["val_loss"] <= VAL_GOAL, ok), "val_goal": VAL_GOAL, **out}


def timed_tokens(h: Harness, engine, prompt: list[int], n: int, params) -> tuple[float, torch.Tensor]:
    h.sync()
    t = time.perf_counter()
    ids = torch.stack([s.ids for s in engine.generate(prompt, n, params, seed=0)], 1)
    h.sync()
    return n / (time.perf_counter() - t), ids


def check_decode(h: Harness) -> dict[str, Any]:
    """The CUDA-graph decode step against eager on the user check's model (random baby weights if
    there is none), greedy, past block_size (one re-prefill); then an odd block size (100) in fp32."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # `gptkit sample` runs without it; training turned it on
    try:
        return decode_figures(h)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def decode_figures(h: Harness) -> dict[str, Any]:
    from gptkit.generate import Engine
    from gptkit.sampling import SamplingParams

    run = h.work / "store" / "shakespeare"
    dtype = torch.float32 if h.dry else runtime.pick_dtype("auto", h.device)
    if (run / checkpoint.LAST).is_file():
        model, tok, _ = checkpoint.load_for_inference(run, h.work / "store", h.device)
        prompt = tok.encode("ROMEO:")
    else:
        torch.manual_seed(0)
        model = GPT(ModelConfig(**(h.cpu_small if h.dry else dict(n_layer=6, n_head=6, n_embd=384, block_size=256)),
                                vocab_size=65)).to(h.device).eval()
        prompt = [1, 2, 3]
    model.to(dtype)
    greedy = SamplingParams(temperature=0)
    n = model.config.block_size + 44  # past the window: one eager re-prefill inside the compiled job
    timed_tokens(h, Engine(model), prompt, 20, greedy)  # warm up eager
    eager_tps, eager_ids = timed_tokens(h, Engine(model), prompt, n, greedy)
    reset_dynamo()
    engine = Engine(model, compile_step=True)
    t = time.perf_counter()
    engine.warm_up(greedy)
    h.sync()
    compile_s = time.perf_counter() - t
    before = dynamo_counters()
    compiled_tps, compiled_ids = timed_tokens(h, engine, prompt, n, greedy)
    after = dynamo_counters()
    prefix = int((compiled_ids == eager_ids)[0].long().cumprod(0).sum())
    gap = 0.0
    if prefix < n:  # how near a tie the first difference was, in eager's own logits (bf16 rounds them)
        steps = list(Engine(model).generate(prompt, prefix + 1, greedy, seed=0))
        logits = steps[prefix].logits[0].float()
        gap = float(logits[eager_ids[0, prefix]] - logits[compiled_ids[0, prefix]])
    sampled_tps, _ = timed_tokens(h, engine, prompt, n, SamplingParams(temperature=0.8, top_k=200))
    torch.manual_seed(0)  # an odd block size through the masked SDPA path, fp32, compiled against eager
    odd = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=64, block_size=100, vocab_size=65)).to(h.device).eval()
    odd_ids = [timed_tokens(h, Engine(odd, compile_step=c), [1, 2, 3], 110 if h.dry else 130, greedy)[1]
               for c in (False, True)]
    saving = 1 / eager_tps - 1 / compiled_tps
    out = {"dtype": str(dtype).removeprefix("torch."), "compile_s": round(compile_s, 1),
           "eager_tokens_per_sec": round(eager_tps), "compiled_tokens_per_sec": round(compiled_tps),
           "sampled_tokens_per_sec": round(sampled_tps), "speedup": round(compiled_tps / eager_tps, 2),
           "recompiles": after["unique_graphs"] - before["unique_graphs"], "cudagraph_skips": after["cudagraph_skips"],
           "greedy_equal_prefix": prefix, "tokens": n, "first_difference_logit_gap": round(gap, 4),
           "odd_block_equal": bool(torch.equal(*odd_ids)),
           "break_even_steps": round(compile_s / saving) if saving > 0 else None,
           "compile_min_steps": runtime.COMPILE_DECODE_MIN_STEPS}
    agree = prefix == n or gap < 0.25  # a near tie in bf16 may go either way
    ok = out["recompiles"] == 0 and out["cudagraph_skips"] == 0 and agree and out["odd_block_equal"]
    return {"rule": "no recompiles, no cudagraph skips, greedy text equal to eager or parting at a near tie "
                    "(< 0.25 logit), past the window and at block 100", "pass": h.rule(ok and compiled_tps > eager_tps, ok),
            **out}


def check_fp16(h: Harness) -> dict[str, Any]:
    """fp16 autocast with the GradScaler (what a V100 or T4 gets), forced on this GPU: 30 steps."""
    dtype = "bfloat16" if h.dry else "float16"  # fp16 autocast is for GPUs; the dry run takes bf16's path
    events, result, seconds = train_run(h, "fp16", "baby", dict(dtype=dtype, compile=False, max_iters=30,
                                                                eval_interval=10**6, eval_iters=1, log_interval=1,
                                                                **(dict(h.cpu_small, batch_size=8, grad_accum=1)
                                                                   if h.dry else {})))
    steps = [e for e in events if e["event"] == "step"]
    losses = [e["loss"] for e in steps]
    start = next(e for e in events if e["event"] == "start")
    falling = sum(losses[-5:]) < sum(losses[:5])
    finite = all(math.isfinite(x) for x in losses)
    return {"rule": "fp16 autocast + GradScaler: 30 finite, falling losses", "dtype": start["dtype"],
            "pass": finite and falling and start["dtype"] == dtype, "loss_first_last": [losses[0], losses[-1]],
            "grad_norm_last": steps[-1]["grad_norm"], "run_s": round(seconds, 1)}


def check_ddp(h: Harness) -> dict[str, Any]:
    """A child process: NCCL (gloo in the dry run) at world size 1 with gptkit's DDP branch forced on
    (it skips DDP at world size 1 by itself), compiled, 2 micro-batches a step."""
    cmd = [sys.executable, __file__, "--ddp-child", "--work", str(h.work)] + (["--dry-run"] if h.dry else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"rule": "the child ran", "pass": False, "exit": proc.returncode, "stderr": proc.stderr[-1500:]}
    return json.loads(lines[-1])


def ddp_child(dry: bool, work: Path) -> None:
    import torch.distributed as dist

    h = Harness(dry, work)

    class Forced(runtime.DistInfo):
        @property
        def enabled(self) -> bool:  # DDP, no_sync, the collectives: as under torchrun with 2+ processes
            return True

    def forced_setup(device_name: str = "auto"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cuda = h.device.type == "cuda"
        if cuda:
            torch.cuda.set_device(h.device)
        dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1,
                                **({"device_id": h.device} if cuda else {}))
        return Forced(0, 0, 1), h.device

    runtime.setup_distributed = forced_setup
    reset_dynamo()
    small = dict(n_layer=4, n_head=4, n_embd=256, block_size=256) if not h.dry else h.cpu_small
    micro = 8
    t = time.perf_counter()
    events, result, seconds = train_run(h, "ddp", "baby", dict(compile=True, max_iters=6, eval_interval=3,
                                                               eval_iters=2, batch_size=micro, grad_accum=2,
                                                               log_interval=2, **small))
    counters = dynamo_counters()
    info = checkpoint.read_info(h.work / "ddp" / checkpoint.LAST)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    ranks = info.state["rng"]["ranks"]
    out = {"steps": result.step, "losses_finite": all(math.isfinite(x) for x in losses),
           "plain_names": not any(k.startswith(("model.module.", "model._orig_mod.")) for k in info.tensors),
           "grad_accum": next(e for e in events if e["event"] == "start")["grad_accum"],
           "rng_ranks": len(ranks), "cuda_rng_saved": "cuda" in ranks[0], "unique_graphs": counters["unique_graphs"],
           "graph_breaks": counters["graph_breaks"], "seconds": round(time.perf_counter() - t, 1)}
    ok = out["losses_finite"] and out["plain_names"] and result.step == 6 and out["rng_ranks"] == 1
    print(json.dumps({"rule": "DDP(compiled) trains 6 steps of 2 micro-batches: finite losses, plain checkpoint "
                              "names, the rank's RNG (CUDA's too) saved",
                      "pass": h.rule(ok and out["cuda_rng_saved"], ok), **out}, default=str))


# in order of what a first five minutes must show; `--only user,decode` runs the 90-s user run (and the
# decode check on its trained model) when the budget skipped it
CHECKS = {"env": check_env, "decisions": check_decisions, "matmul": check_matmul, "train": check_train,
          "sdpa": check_sdpa, "fp16": check_fp16, "decode": check_decode, "ddp": check_ddp, "user": check_user}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the same harness on CPU with tiny shapes")
    ap.add_argument("--only", help="comma-separated checks: " + ",".join(CHECKS))
    ap.add_argument("--budget", type=float, default=290, help="skip checks that would end later (seconds; 0: none)")
    ap.add_argument("--record", action="store_true", help="append each check's figures to benchmarks/results.jsonl")
    ap.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ddp_child:
        ddp_child(args.dry_run, args.work)
        return 0
    names = args.only.split(",") if args.only else list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        ap.error(f"unknown check {unknown[0]!r}; choose from {', '.join(CHECKS)}")
    if not args.dry_run and not torch.cuda.is_available():
        print(json.dumps({"check": "env", "pass": False, "rule": "a CUDA GPU", "cuda_available": False}))
        return 1
    t0 = time.perf_counter()
    failed, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(args.dry_run, Path(tmp))
        for name in names:
            left = args.budget - (time.perf_counter() - t0)
            if args.budget and not args.dry_run and ESTIMATE[name] > left:
                skipped.append(name)
                print(json.dumps({"check": name, "pass": None, "rule": "skipped: not enough of --budget left",
                                  "estimate_s": ESTIMATE[name], "left_s": round(left)}), flush=True)
                continue
            t = time.perf_counter()
            try:
                row = {"check": name, **CHECKS[name](h)}
            except Exception as e:  # one check's failure is a line, and the others still run
                row = {"check": name, "pass": False, "rule": "ran without an exception",
                       "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500],
                       "where": traceback.format_exc().strip().splitlines()[-3:]}
            row["seconds"] = round(time.perf_counter() - t, 1)
            print(json.dumps(row, default=str), flush=True)
            if row["pass"] is False:
                failed.append(name)
            if args.record:
                record(row, args.dry_run)
    print(json.dumps({"check": "summary", "pass": not failed, "failed": failed, "skipped": skipped,
                      "dry_run": args.dry_run, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 1 if failed else 0


def record(row: dict[str, Any], dry: bool) -> None:
    """One results.jsonl row per check: its scalar figures (nested ones flattened a level)."""
    from results import record as append

    figures: dict[str, Any] = {}
    for k, v in row.items():
        if k in ("check", "rule", "where"):
            continue
        if isinstance(v, dict):
            figures.update({f"{k} {kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float, str, bool))})
        elif isinstance(v, (int, float, str, bool)) or v is None:
            figures[k] = v
    append(f"gpu.py {row['check']}", figures, note="dry run (CPU)" if dry else "")


if __name__ == "__main__":
    sys.exit(main())
