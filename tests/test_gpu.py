"""What only a GPU can show: training in bf16, in fp16 with loss scaling and in fp32 on CUDA; fused
attention against the textbook; DDP over NCCL; compile on by default; checkpoints moving between
GPU and CPU; resume with dropout; free memory and the peak FLOP/s of this GPU.

Skipped without CUDA. A GPU runner sets GPTKIT_REQUIRE_GPU=1: then a missing GPU fails every test
here instead of skipping it. The decisions behind each one, taken with `torch.cuda` patched, are
tests/test_gpu_paths.py's and run everywhere.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from gptkit import checkpoint, hardware, memory, runtime
from gptkit.config import ModelConfig, resolve_config
from gptkit.train import flops_per_token, train
from tests.conftest import ROOT, SHAKESPEARE, recorded_eval, run_here

REQUIRED = os.environ.get("GPTKIT_REQUIRE_GPU") == "1"
SMALL = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=8, grad_accum=1, eval_iters=2,
             warmup_iters=0, learning_rate=1e-3, min_lr=1e-3, device="cuda")


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        if REQUIRED:
            pytest.fail("GPTKIT_REQUIRE_GPU=1 but torch.cuda.is_available() is False (torch's CPU build, or no driver)")
        pytest.skip("no CUDA GPU (GPTKIT_REQUIRE_GPU=1 makes this a failure)")
    return torch.device("cuda", 0)


@pytest.fixture
def tf32():
    """tf32(False): fp32 matmuls without TF32 from there on (a training turns it on for the process),
    for comparisons; the flags are as they were after the test (monkeypatch would delete them)."""
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    before = [f.allow_tf32 for f in flags]
    yield lambda on: [setattr(f, "allow_tf32", on) for f in flags]
    for f, value in zip(flags, before, strict=True):
        f.allow_tf32 = value


def _train(tmp_path, name: str, resume: bool = False, **overrides):
    """A small char model on tinyshakespeare on the GPU, eager unless `compile` is given; (events, result)."""
    overrides.setdefault("compile", False)
    mc, tc = resolve_config("tiny", None, {**SMALL, **overrides})
    events: list[dict] = []
    result = train(mc, tc, str(SHAKESPEARE), tmp_path / name, tmp_path, on_event=events.append, resume=resume,
                   explicit=set(overrides) if resume else None)
    return events, result


def _of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind]


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return checkpoint.load_tensors(checkpoint.read_info(run_dir / checkpoint.LAST), "model.")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_training_in_each_precision_learns_and_keeps_fp32_weights(cuda, tmp_path):
    """bf16 autocast, fp16 autocast with the GradScaler, fp32 (TF32 matmuls): 20 finite steps of falling
    loss each, fp32 master weights in the checkpoint. fp16's gradient norms are the unscaled ones (the
    scaler's factor, 65536 at first, taken out before the clip) like fp32's: a step the scaler skips
    for an overflow shows as a non-finite norm and is left out."""
    norms = {}
    for dtype in ("float32", "bfloat16", "float16"):
        events, result = _train(tmp_path, dtype, dtype=dtype, max_iters=20, eval_interval=20)
        assert _of(events, "start")[0]["dtype"] == dtype
        steps = _of(events, "step")
        losses = [s["loss"] for s in steps]
        assert len(losses) == 20 and all(math.isfinite(x) for x in losses), (dtype, losses)
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, (dtype, losses)
        info = checkpoint.read_info(result.run_dir / checkpoint.LAST)
        assert {t["dtype"] for k, t in info.tensors.items() if k.startswith("model.")} == {"F32"}, dtype
        norms[dtype] = [s["grad_norm"] for s in steps if math.isfinite(s["grad_norm"])]
    assert len(norms["float16"]) >= 15 and len(norms["bfloat16"]) == 20
    assert norms["bfloat16"][0] == pytest.approx(norms["float32"][0], rel=0.05)  # the same first batch and weights
    assert max(norms["float16"]) < 10 * max(norms["float32"]), norms


def test_fused_attention_matches_the_textbook_and_an_odd_head_size_still_runs(cuda, monkeypatch, tf32):
    """The fused kernels (flash, cuDNN, memory-efficient) run at the training shape, and the model's
    bf16 logits equal those of the textbook masked softmax; a head size of 20 (no multiple of 8, which
    flash needs) still runs, through whichever kernel takes it."""
    import torch.nn.functional as F

    from gptkit.model import GPT, manual_attention

    hardware.enable_fast_math(cuda)  # as training does
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert hardware.sdpa_fallback(cuda, torch.bfloat16, (8, 4, 256, 64)) is None
    why = hardware.sdpa_fallback(cuda, torch.bfloat16, (8, 3, 256, 20))
    assert why is None or "heads of 20" in why
    fused = F.scaled_dot_product_attention

    def textbook(q, k, v, attn_mask=None, is_causal=False, **kw):
        assert is_causal and attn_mask is None
        return manual_attention(q, k, v)[0]

    for n_embd, n_head in ((256, 4), (60, 3)):
        cfg = ModelConfig(n_layer=2, n_head=n_head, n_embd=n_embd, block_size=256, vocab_size=512)
        torch.manual_seed(0)
        model = GPT(cfg).to(cuda).eval()
        idx = torch.randint(0, cfg.vocab_size, (4, cfg.block_size), device=cuda)
        logits = {}
        for name, attention in (("fused", fused), ("textbook", textbook)):
            monkeypatch.setattr(F, "scaled_dot_product_attention", attention)
            with torch.no_grad(), runtime.autocast(cuda, torch.bfloat16):
                logits[name] = model(idx)[0].float()
        monkeypatch.setattr(F, "scaled_dot_product_attention", fused)
        ref = logits["textbook"]
        assert torch.isfinite(logits["fused"]).all()
        assert (logits["fused"] - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3, n_embd


DDP_ARGS = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--max-iters", "8",
            "--eval-interval", "8", "--eval-iters", "2", "--warmup-iters", "2", "--device", "cuda", "-q",
            "--grad-accum", "1", "--dtype", "float32", "--no-compile"]


def test_ddp_over_nccl_on_two_gpus_equals_one_process(cuda, tmp_path):
    """torchrun on 2 GPUs (NCCL, each rank its own GPU) trains the weights 1 process does with twice the
    batch, up to TF32 and reduction-order rounding."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs: NCCL takes one GPU per rank (one GPU: the next test)")
    env = {**os.environ, "NO_COLOR": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "gptkit",
                          "train", str(SHAKESPEARE), "--run-name", "ddp", "--store", str(tmp_path), "--batch-size",
                          "2", *DDP_ARGS], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "gptkit", "train", str(SHAKESPEARE), "--run", "one", "--store",
                          str(tmp_path), "--batch-size", "4", *DDP_ARGS], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _max_diff(_weights(tmp_path / "ddp"), _weights(tmp_path / "one")) < 5e-3
    states = [checkpoint.read_info(tmp_path / r / checkpoint.LAST).state for r in ("ddp", "one")]
    assert states[0]["val_loss"] == pytest.approx(states[1]["val_loss"], abs=1e-2)
    assert len(states[0]["rng"]["ranks"]) == 2 and all("cuda" in r for r in states[0]["rng"]["ranks"])


def test_the_ddp_path_over_nccl_on_one_gpu(cuda):
    """gptkit skips DDP at world size 1, so torchrun on one GPU would prove nothing: benchmarks/gpu.py's
    ddp check forces gptkit's DDP branch on over NCCL (compiled, no_sync over 2 micro-batches, the
    collectives, plain checkpoint names, the rank's CUDA generator saved)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--only", "ddp", "--budget", "0"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    rows = {r["check"]: r for r in map(json.loads, (ln for ln in proc.stdout.splitlines() if ln.startswith("{")))}
    assert rows.get("ddp", {}).get("pass") is True, (rows, proc.stderr[-3000:])


def test_training_compiles_by_default_and_a_compiled_decode_step_gives_eagers_text(cuda, tmp_path, capsys, tf32):
    """No --compile: a CUDA run is compiled (no warning that it fell back) and learns as the eager run
    does; sampling it with the compiled decode step (CUDA graphs) gives eager's greedy text, and a job
    this short is not compiled unless asked."""
    events, compiled = _train(tmp_path, "compiled", compile=None, max_iters=10, eval_interval=10, dtype="float32")
    eager_events, eager = _train(tmp_path, "eager", max_iters=10, eval_interval=10, dtype="float32")
    assert _of(events, "start")[0]["compiled"] is True and not _of(events, "warning")
    assert _of(eager_events, "start")[0]["compiled"] is False
    assert compiled.val_loss == pytest.approx(eager.val_loss, abs=0.05)
    tf32(False)
    args = ("sample", "-c", str(compiled.run_dir), "-p", "ROMEO:", "-n", "48", "--temperature", "0", "--no-echo",
            "--dtype", "float32", "-v")
    graphs, plain, auto = (run_here(capsys, *args, *flag) for flag in (["--compile"], ["--no-compile"], []))
    assert all(p.returncode == 0 for p in (graphs, plain, auto)), (graphs.stderr, plain.stderr, auto.stderr)
    assert "compile on" in graphs.stderr and "compile off" in plain.stderr and "compile off" in auto.stderr
    assert graphs.stdout == plain.stdout == auto.stdout and len(plain.stdout.strip()) > 10


def test_a_gpu_checkpoint_loads_on_the_cpu_and_back(cuda, tmp_path, capsys, tf32):
    """Trained on the GPU, saved from it: the tensors read on either device are the same numbers; the
    CPU reproduces the validation loss the GPU recorded, and the logits; `sample` takes the GPU's
    precision by default there; `inspect --device cuda` shows what the CPU shows."""
    _, result = _train(tmp_path, "r", max_iters=4, eval_interval=4, dtype="bfloat16")
    run = result.run_dir
    tf32(False)
    info = checkpoint.read_info(run / checkpoint.LAST)
    on_cpu, on_gpu = checkpoint.load_tensors(info, "model."), checkpoint.load_tensors(info, "model.", cuda)
    assert all(t.is_cuda for t in on_gpu.values()) and all(torch.equal(on_gpu[k].cpu(), on_cpu[k]) for k in on_cpu)
    cpu_model, tok, _ = checkpoint.load_for_inference(run, device="cpu")
    gpu_model, _, _ = checkpoint.load_for_inference(run, device=cuda)
    recorded, measured = recorded_eval(cpu_model, run)  # on the CPU, in the run's bf16 autocast
    assert measured == pytest.approx(recorded, abs=0.05)
    idx = torch.tensor([tok.encode(SHAKESPEARE.read_text(encoding="utf-8")[:64])])
    with torch.no_grad():
        assert (cpu_model(idx)[0] - gpu_model(idx.to(cuda))[0].cpu()).abs().max() < 1e-4
    proc = run_here(capsys, "sample", "-c", str(run), "-p", "ROMEO:", "-n", "20", "--device", "cuda", "-v")
    precision = "bfloat16" if hardware.native_bf16(cuda) else "float16"
    assert proc.returncode == 0 and re.search(rf"cuda(:0)? {precision} \|", proc.stderr), proc.stderr
    shown = {}
    for device in ("cuda", "cpu"):
        proc = run_here(capsys, "inspect", str(run), "-p", "ROMEO:", "--json", "--device", device)
        assert proc.returncode == 0, proc.stderr
        shown[device] = json.loads(proc.stdout)["analysis"]["next_token"]
    assert [t["id"] for t in shown["cuda"]] == [t["id"] for t in shown["cpu"]]
    assert [t["prob"] for t in shown["cuda"]] == pytest.approx([t["prob"] for t in shown["cpu"]], abs=1e-4)


def test_resume_with_dropout_continues_the_gpus_dropout_stream(cuda, tmp_path, monkeypatch):
    """3 steps, then a resume to 6, with dropout 0.1: the weights of 6 straight steps, up to the GPU's
    reduction-order rounding, and far closer than a resume that lost the GPU's generator (it draws
    the first steps' dropout masks again)."""
    common = dict(dropout=0.1, eval_interval=3, dtype="float32")
    _train(tmp_path, "straight", max_iters=6, **common)
    _train(tmp_path, "split", max_iters=3, **common)
    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / checkpoint.LAST).write_bytes((tmp_path / "split" / checkpoint.LAST).read_bytes())
    _train(tmp_path, "split", resume=True, max_iters=6, **common)  # dropout and dtype are this command's
    real = runtime.set_rng_state
    monkeypatch.setattr(runtime, "set_rng_state", lambda state, device: real(
        {k: v for k, v in state.items() if k != "cuda"}, device))
    _train(tmp_path, "lost", resume=True, max_iters=6, **common)
    straight = _weights(tmp_path / "straight")
    assert "cuda" in checkpoint.read_info(tmp_path / "split" / checkpoint.LAST).state["rng"]["ranks"][0]
    kept, lost = _max_diff(_weights(tmp_path / "split"), straight), _max_diff(_weights(tmp_path / "lost"), straight)
    assert kept <= lost / 10 and lost > 0, (kept, lost)


def test_free_memory_the_micro_batch_it_fits_and_the_mfu_against_this_gpus_peak(cuda, tmp_path, monkeypatch):
    """The free memory is the driver's; the automatic micro-batch fits in its share of it; the peak
    FLOP/s is the table's entry for this GPU's name (one of the families the table knows has one),
    and the MFU a run shows is its tokens/s times FLOPs per token over that peak, below 1."""
    from gptkit.model import GPT

    free, total = torch.cuda.mem_get_info(cuda)
    avail = memory.available_memory(cuda)
    assert 0 < avail <= total and abs(avail - free) < 2**30  # another process may allocate in between
    mc, _ = resolve_config("gpt2", None, {}, device_type="cuda")
    mc.vocab_size = 50257
    micro = memory.fit_micro_batch(mc, 480, cuda, torch.bfloat16)
    assert 1 <= micro and memory.training_memory(mc, micro, torch.bfloat16) <= memory.MEMORY_SHARE * avail
    monkeypatch.delenv("GPTKIT_PEAK_FLOPS", raising=False)
    name = torch.cuda.get_device_name(cuda)
    peak = hardware.peak_flops(cuda, torch.bfloat16)
    assert peak == hardware.gpu_peak(name)
    if any(family in name for family in ("H100", "H200", "A100", "L40", "L4", "A10", "V100", "T4", "B200")):
        assert peak is not None, name
    if peak is None:
        pytest.skip(f"no peak FLOP/s is known for {name!r}: no MFU to check")
    events, result = _train(tmp_path, "mfu", max_iters=12, eval_interval=12, dtype="bfloat16")
    cfg = checkpoint.read_info(result.run_dir / checkpoint.LAST).model_config
    with torch.device("meta"):
        per_token = flops_per_token(GPT(cfg), cfg)
    for step in _of(events, "step")[2:]:
        assert step["mfu"] == pytest.approx(step["tokens_per_sec"] * per_token / peak, rel=1e-6)
        assert 0 < step["mfu"] < 1
