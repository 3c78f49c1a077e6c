"""Sampling speed at the `baby` dims (6 layers, 6 heads, 384 wide, block 256, vocab 65), batch 1.

Prints, measured in one run so the ratios hold on a noisy machine:
  1. tokens/s for N new tokens (default 500) with the KV cache and with the no-cache reference path
     (`--no-cache`: a full forward over the window at every step), at several prompt lengths, best of
     3 runs of each, interleaved across paths and prompt lengths (every run is printed too; ~4 minutes
     in all on 2 CPU cores); with --compile, `gptkit sample --compile`'s path too (the decode step
     through torch.compile), in the same interleaved runs;
  2. the per-token time by context length: flat with the cache, growing without it;
  3. when `transformers` is installed, `GPT2LMHeadModel.generate` (its own KV cache) with the same
     dims and weights, greedy, inside one block (GPT-2 cannot go past its positions), best of 3
     interleaved runs; the two greedy texts must agree, which checks the weight mapping;
  4. with --dtype bfloat16, the same model in bf16 against fp32: speed, and how long the greedy
     texts agree and how far the logits drift;
  5. the UTF-8 mask (`sample`'s default for byte-level tokenizers) against no mask, at the baby dims
     with a 4,096-token BPE trained on tests/data/korean.txt, temperature 1: tokens/s of each, best of
     2 x --repeat runs in ABBA order (target: the mask costs at most 5%), and the mask's own per-step
     operations timed alone against the model's step.
Random weights: speed does not depend on them.

    python benchmarks/sample.py [--new-tokens 500] [--contexts 16,128,240] [--repeat 3] [--threads N]
                                [--dtype bfloat16] [--compile] [--only utf8]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time

import torch

from gptkit.config import ModelConfig
from gptkit.generate import Engine, window_start
from gptkit.model import GPT
from gptkit.sampling import SamplingParams
from gptkit.split_linear import use_fastest

GREEDY = SamplingParams(temperature=0)
BABY = ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0)


def timed_run(engine: Engine, prompt: list[int], n: int) -> tuple[float, list[float], list[int], list[torch.Tensor]]:
    """(tokens/s, seconds per step, ids, logits) for n greedy tokens."""
    times, ids, logits = [], [], []
    t0 = last = time.perf_counter()
    for step in engine.generate(prompt, n, GREEDY, seed=0):
        ids.append(int(step.ids[0]))
        logits.append(step.logits[0].float().clone())
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return n / (last - t0), times, ids, logits


def by_context(times: list[float], prompt_len: int, block: int, keep: int, bucket: int = 64) -> dict[str, float]:
    """Mean ms per token grouped by how many tokens the model saw for it (the window's length);
    the steps where the window restarted (a re-prefill of `keep` tokens) are grouped apart."""
    groups: dict[str, list[float]] = {}
    start, n = max(0, prompt_len - block), prompt_len
    for t in times[1:]:  # the first step includes the prompt's prefill
        n += 1
        new_start = window_start(start, n, block, keep)
        moved, start = new_start != start, new_start
        k = (n - start - 1) // bucket * bucket
        groups.setdefault("restart" if moved else f"{k + 1}-{k + bucket}", []).append(t)
    return {k: 1000 * sum(v) / len(v) for k, v in groups.items()}


def hf_model(model: GPT):
    """GPT2LMHeadModel with the same weights, or None when transformers is not installed."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        from gptkit.hf.gpt2 import hf_config_from, to_hf_state_dict  # the weight-name map `gptkit convert` uses
    except ImportError:
        return None

    fields = {k: v for k, v in hf_config_from(model.config).items() if k not in ("architectures", "torch_dtype")}
    ref = GPT2LMHeadModel(GPT2Config(**fields)).eval()
    missing, unexpected = ref.load_state_dict(to_hf_state_dict(model.state_dict(), model.config), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    ref.tie_weights()
    return ref


def compare_hf(model: GPT, engines: dict[str, Engine], prompt: list[int],
               repeat: int = 3) -> dict[str, tuple[float, float, bool]]:
    """Each engine against one GPT2LMHeadModel with the same weights, built and warmed up once."""
    ref = hf_model(model)
    if ref is None:
        print("transformers is not installed: skipped the GPT2LMHeadModel.generate comparison")
        return {}
    n = model.config.block_size - len(prompt)  # GPT-2 has no positions past its block
    ids = torch.tensor([prompt])
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, min_new_tokens=n,
              pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        ref.generate(ids, max_new_tokens=4, **{k: v for k, v in kw.items() if "new_tokens" not in k})  # warm up

    def hf_run() -> tuple[float, list[int]]:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = ref.generate(ids, **kw)
            return n / (time.perf_counter() - t0), out[0, len(prompt):].tolist()

    def ours(engine: Engine) -> tuple[float, list[int]]:
        tps, _, out, _ = timed_run(engine, prompt, n)
        return tps, out

    ratios = {}
    for name, engine in engines.items():
        runs: dict[str, list[tuple[float, list[int]]]] = {"hf": [], "gptkit": []}
        for _ in range(repeat):  # interleaved, best of `repeat`: this machine's speed drifts between runs
            runs["hf"].append(hf_run())
            runs["gptkit"].append(ours(engine))
        (hf_tps, theirs), (tps, mine) = max(runs["hf"]), max(runs["gptkit"])
        print(f"\n{name} vs transformers GPT2LMHeadModel.generate, {n} greedy tokens after a {len(prompt)}-token "
              f"prompt, best of {repeat} interleaved runs:")
        print(f"  gptkit {tps:7.1f} tokens/s | transformers {hf_tps:7.1f} tokens/s | ratio {tps / hf_tps:.2f}x "
              f"| same greedy text: {theirs == mine}")
        ratios[name] = (tps, hf_tps, theirs == mine)
    return ratios


def compare_utf8(n: int, repeat: int, vocab_size: int = 4096) -> dict[str, float]:
    """Tokens/s with and without the UTF-8 mask, same model, prompt and seed, runs in ABBA order."""
    from pathlib import Path

    from gptkit.completion import utf8_constraint
    from gptkit.tokenizers.bpe import train_bpe

    text = (Path(__file__).resolve().parents[1] / "tests" / "data" / "korean.txt").read_text(encoding="utf-8")
    tok = train_bpe(text, vocab_size)
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(BABY, vocab_size=tok.vocab_size)).eval()
    use_fastest(model)
    utf8 = utf8_constraint(tok, model.config.vocab_size)
    engine, prompt, params = Engine(model), tok.encode("그날 밤, 나는"), SamplingParams(temperature=1.0)

    def run(mask) -> tuple[float, list[float], bytes]:
        ids, stamps = [], [time.perf_counter()]
        for s in engine.generate(prompt, n, params, seed=0, utf8=mask):
            ids.append(int(s.ids[0]))
            stamps.append(time.perf_counter())
        return n / (stamps[-1] - stamps[0]), [b - a for a, b in itertools.pairwise(stamps)], tok.decode_bytes(ids)

    run(utf8), run(None)  # warm up
    runs: dict[str, list[float]] = {"mask": [], "none": []}
    steps: dict[str, list[float]] = {"mask": [], "none": []}  # every step's time: the median shrugs off a burst
    broken = {}
    # twice `repeat` runs each, in ABBA order (mask, none, none, mask, ...): a speed drift within the
    # minute then favours neither side, as a fixed mask-first order did
    pair = (("mask", utf8), ("none", None))
    for i in range(2 * repeat):
        for name, mask in pair if i % 2 == 0 else pair[::-1]:
            tps, times, data = run(mask)
            runs[name].append(tps)
            steps[name] += times
            broken[name] = data.decode("utf-8", errors="replace").count("\ufffd")
    states, ids = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    logits = torch.randn(1, model.config.vocab_size)
    t0 = time.perf_counter()
    for _ in range(2000):  # the mask's own work in a step: row lookup, masked fill, state advance
        logits.masked_fill(utf8.blocked(states), float("-inf"))
        states = utf8.advance(states, ids)
    mask_ms = (time.perf_counter() - t0) / 2
    best_m, best_n = max(runs["mask"]), max(runs["none"])
    med_m, med_n = statistics.median(steps["mask"]), statistics.median(steps["none"])
    print(f"\nUTF-8 mask, baby dims with a {tok.vocab_size}-token Korean BPE, {n} tokens at temperature 1, "
          f"best of {2 * repeat} runs each in ABBA order:")
    print(f"  masked {best_m:7.1f} tokens/s | unmasked {best_n:7.1f} tokens/s | ratio {best_m / best_n:.3f} "
          f"(every run: {' '.join(f'{a:.0f}/{b:.0f}' for a, b in zip(runs['mask'], runs['none'], strict=True))})")
    print(f"  the mask's operations alone: {mask_ms * 1000:.1f} us a step, {100 * mask_ms / 1000 * best_n:.1f}% of "
          f"an unmasked step | U+FFFD in the last text: masked {broken['mask']}, unmasked {broken['none']}")
    print(f"  median step of all runs: masked {med_m * 1000:.3f} ms | unmasked {med_n * 1000:.3f} ms | "
          f"speed ratio {med_n / med_m:.3f}")
    return {"utf8 mask x unmasked": round(best_m / best_n, 3), "utf8 mask tok/s": round(best_m, 1),
            "utf8 mask us/step": round(mask_ms * 1000, 1), "utf8 mask x unmasked, median step": round(med_n / med_m, 3)}


def compare_bf16(model: GPT, prompt: list[int], n: int, fp32: tuple[float, list[int], list[torch.Tensor]]) -> None:
    tps32, ids32, logits32 = fp32
    half = GPT(model.config).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    tps16, _, ids16, logits16 = timed_run(Engine(half), prompt, n)
    agree = next((i for i, (a, b) in enumerate(zip(ids32, ids16, strict=True)) if a != b), n)
    drift = max((a - b).abs().max().item() for a, b in zip(logits32[:agree], logits16[:agree], strict=True)) \
        if agree else float("nan")
    print(f"\nbf16 weights, cache, {n} tokens: {tps16:.1f} tokens/s vs fp32 {tps32:.1f} ({tps16 / tps32:.2f}x); "
          f"greedy texts agree for {agree}/{n} tokens; max logit difference before that {drift:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=500)
    ap.add_argument("--contexts", default="16,128,240", help="prompt lengths, comma-separated")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="bfloat16 also runs the bf16 vs fp32 comparison")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow to start)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per prompt length; the best counts")
    ap.add_argument("--record", action="store_true", help="append the figures to benchmarks/results.jsonl")
    ap.add_argument("--only", choices=("utf8",), help="run only this comparison (utf8: the UTF-8 mask)")
    ap.add_argument("--cpu-split", choices=("auto", "off"), default="auto",
                    help="auto: what `gptkit sample` does on a CPU (split_linear.use_fastest); off: nn.Linear")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="CPU threads for every path, transformers' included (default: all cores, which is "
                         "what gptkit sample takes on an idle machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.only == "utf8":
        figures = compare_utf8(args.new_tokens, args.repeat)
        if args.record:
            from results import record

            record(f"sample.py --only utf8 (baby dims, 4096-token BPE, {args.new_tokens} tokens)", figures)
        return
    model = GPT(BABY).eval()
    plan, saving = use_fastest(model) if args.cpu_split == "auto" else ("off", 0.0)
    n, contexts = args.new_tokens, [int(c) for c in args.contexts.split(",")]
    plain = Engine(model, use_cache=False)
    cached = {"cache": Engine(model)}  # `gptkit sample`'s default path; with --compile also its --compile path
    if args.compile:
        cached["cache, compiled"] = Engine(model, compile_step=True)
    print(f"baby dims {BABY.n_layer}x{BABY.n_embd}, block {BABY.block_size}, batch 1, fp32, "
          f"{torch.get_num_threads()} threads, cpu split {plan} (saves {100 * saving:.0f}% of the projections' time), "
          f"compile {'on' if args.compile else 'off'}")
    for engine in cached.values():
        t0 = time.perf_counter()
        timed_run(engine, list(range(8)), 8)  # warm up (and compile, if asked)
        if engine.compiled:
            print(f"compiled the decode step in {time.perf_counter() - t0:.1f} s")
    first, figures = None, {}
    prompts = {ctx: [i % BABY.vocab_size for i in range(ctx)] for ctx in contexts}
    # interleaved across engines and prompt lengths alike, best of `repeat`: this machine's speed drifts
    # within minutes, and each round then meets every prompt length, not only the last ones
    runs = {ctx: {name: [] for name in (*cached, "no cache")} for ctx in contexts}
    for _ in range(args.repeat):
        for ctx, prompt in prompts.items():
            for name, engine in (*cached.items(), ("no cache", plain)):
                runs[ctx][name].append(timed_run(engine, prompt, n))
    for ctx in contexts:
        best = {name: max(r, key=lambda t: t[0]) for name, r in runs[ctx].items()}
        tps_p, times_p, ids_p, _ = best["no cache"]
        print(f"\nprompt {ctx:3d} tokens, {n} new, best of {args.repeat}: no cache {tps_p:6.1f} tokens/s "
              f"(every run: {' '.join(f'{r[0]:.1f}' for r in runs[ctx]['no cache'])})")
        flat_p = by_context(times_p, ctx, BABY.block_size, plain.keep)
        for name, engine in cached.items():
            tps_c, times_c, ids_c, logits_c = best[name]
            first = first or (tps_c, ids_c, logits_c)
            if name == "cache":
                figures[f"x no cache @{ctx}"] = round(tps_c / tps_p, 2)
                figures[f"tok/s @{ctx}"] = round(tps_c, 1)
            print(f"  {name:15s} {tps_c:7.1f} tokens/s | {tps_c / tps_p:5.1f}x no cache | same greedy text: "
                  f"{ids_c == ids_p} | every run: {' '.join(f'{r[0]:.0f}' for r in runs[ctx][name])}")
            flat_c = by_context(times_c, ctx, BABY.block_size, engine.keep)
            print(f"    ms/token ({name} vs no cache) by context length:", " | ".join(
                f"{k}: {flat_c[k]:.2f} vs {flat_p[k]:.1f}"
                for k in sorted(flat_c, key=lambda k: int(k.split("-")[0]) if k[0].isdigit() else 1e9)))
    hf = compare_hf(model, cached, [i % BABY.vocab_size for i in range(16)])
    if "cache" in hf:
        figures["x transformers"] = round(hf["cache"][0] / hf["cache"][1], 2)
        figures["same text as transformers"] = hf["cache"][2]
    if args.dtype == "bfloat16":
        compare_bf16(model, [i % BABY.vocab_size for i in range(contexts[0])], n, first)
    figures.update(compare_utf8(n, args.repeat))
    if args.record:
        from results import record

        record("sample.py (baby dims, batch 1, 500 new tokens)", figures, note=f"cpu split {plan}")


if __name__ == "__main__":
    main()
