"""Generation: the KV cache equals the full forward at every step (past block_size too, learned
positions and RoPE), sampling filters on hand-made distributions, seeds, batched samples, stop
strings and UTF-8 streaming on real text, and the compiled decode step on CPU."""

from __future__ import annotations

import pytest
import torch

from gptkit import checkpoint
from gptkit.completion import TextStream, complete
from gptkit.generate import Engine, generate, row_seed
from gptkit.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    min_p_filter,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)
from gptkit.tokenizers import build_tokenizer
from tests.conftest import ENGLISH, KOREAN, SHAKESPEARE, torch_threads

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def char_model(trained_run):
    model, tok, _ = checkpoint.load_for_inference(trained_run["run_dir"])
    return model, tok


@pytest.fixture(scope="module")
def rope_model(tmp_path_factory):
    """A small RoPE + RMSNorm + SwiGLU model trained for real on tinyshakespeare (a few seconds)."""
    from gptkit.config import resolve_config
    from gptkit.train import train

    store = tmp_path_factory.mktemp("rope")
    mc, tc = resolve_config("tiny", None, dict(
        n_layer=2, n_embd=64, block_size=32, pos_encoding="rope", norm="rmsnorm", mlp="swiglu",
        max_iters=150, eval_interval=150, eval_iters=5))
    train(mc, tc, str(SHAKESPEARE), store / "rope", store)
    model, tok, _ = checkpoint.load_for_inference(store / "rope")
    return model, tok


def run(engine: Engine, prompt: list[int], n: int, params: SamplingParams = GREEDY, seed: int | None = 0):
    steps = list(engine.generate(prompt, n, params, seed))
    return torch.stack([s.ids for s in steps], 1), [s.logits.clone() for s in steps]  # (B, n), n x (B, V)


# 2 threads (other reduction splits) on the smaller model: a 2-thread test on a core that other test
# workers share waits at every parallel region for a descheduled thread
@pytest.mark.parametrize("which, threads", [("char_model", 1), ("rope_model", 1), ("rope_model", 2)])
def test_cached_logits_equal_the_full_forward_at_every_step_past_block_size(request, which, threads):
    model, tok = request.getfixturevalue(which)
    block = model.config.block_size
    prompt = tok.encode("ROMEO:\nWhat say")
    n = 3 * block + 7  # the window restarts several times
    with torch_threads(threads):
        for params in (GREEDY, SamplingParams(temperature=0.8)):  # greedy text, then varied text
            ids_c, logits_c = run(Engine(model), prompt, n, params)
            ids_p, logits_p = run(Engine(model, use_cache=False), prompt, n, params)
            assert torch.equal(ids_c, ids_p)  # the same text
            for step, (a, b) in enumerate(zip(logits_c, logits_p, strict=True)):
                assert torch.allclose(a, b, atol=2e-5, rtol=1e-5), (which, step, (a - b).abs().max())
    assert len(set(ids_c[0].tolist())) > 10  # the sampled text is real text, not one repeated token
    # within the first block, both are the plain forward over the whole sequence
    seq = torch.tensor([prompt + ids_c[0, :block - len(prompt)].tolist()])
    full, _ = model(seq)
    for i in range(block - len(prompt)):
        assert torch.allclose(logits_c[i][0], full[0, len(prompt) - 1 + i], atol=2e-5)


def test_batched_sampling_with_cache_equals_reference_past_block_size(rope_model):
    """Rows diverge after the shared prefill; the window restarts re-prefill every row. The prompt
    is longer than the block: the first window is its last block_size tokens."""
    model, tok = rope_model
    params = SamplingParams(temperature=1.0, top_k=20, repetition_penalty=1.3)
    prompt = tok.encode("KING RICHARD III:\nNow is the winter of our discontent\n")
    assert len(prompt) > model.config.block_size
    ids_c, _ = run(Engine(model, num_samples=3), prompt, 80, params, seed=5)
    ids_p, _ = run(Engine(model, num_samples=3, use_cache=False), prompt, 80, params, seed=5)
    assert torch.equal(ids_c, ids_p)
    assert len({tuple(r) for r in ids_c.tolist()}) == 3


def test_seed_reproduces_and_samples_are_independent(char_model):
    model, tok = char_model
    prompt, params = tok.encode("JULIET:"), SamplingParams(temperature=0.9, top_k=20)
    engine = Engine(model, num_samples=4)
    a, _ = run(engine, prompt, 120, params, seed=7)
    b, _ = run(engine, prompt, 120, params, seed=7)
    c, _ = run(engine, prompt, 120, params, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r) for r in a.tolist()}) == 4  # four different samples from one batch
    # greedy: every row is the single-sample greedy text, so the shared prefill is right
    g, _ = run(engine, prompt, 40)
    assert all(row == list(generate(model, prompt, 40, temperature=0)) for row in g.tolist())


def test_each_row_is_the_one_row_run_of_its_own_seed(char_model):
    """Row r of a batch seeded s samples what a one-row run seeded row_seed(s, r) does, so any sample
    of `--num-samples` (or of a `--lines` job) can be reproduced alone from the seed it reports."""
    model, tok = char_model
    prompt, params = tok.encode("JULIET:"), SamplingParams(temperature=0.9, top_k=20)
    seed = 2**63 - 2  # the largest seeds wrap around to 0
    batch, _ = run(Engine(model, num_samples=3), prompt, 60, params, seed=seed)
    assert [row_seed(seed, r) for r in range(3)] == [2**63 - 2, 2**63 - 1, 0]
    for r in range(3):
        alone, _ = run(Engine(model), prompt, 60, params, seed=row_seed(seed, r))
        assert alone[0].tolist() == batch[r].tolist()


def test_batch_rows_are_independent_draws_from_the_model(char_model):
    """4000 rows of one step: first-token frequencies match softmax(logits) (total variation < 0.06)."""
    model, tok = char_model
    prompt = tok.encode("First Citizen:\nWe are")
    step = next(Engine(model, num_samples=4000).generate(prompt, 1, SamplingParams(temperature=1.0), seed=3))
    probs = torch.softmax(step.logits[0].float(), -1)
    freq = torch.bincount(step.ids, minlength=probs.numel()).float() / 4000
    assert 0.5 * (freq - probs).abs().sum() < 0.06
    assert len(set(step.ids.tolist())) > 1


HAND = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))  # (2, 4): two rows


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(torch.isfinite(row)).flatten().tolist() for row in logits]


def test_filters_on_hand_made_distributions():
    assert kept(top_k_filter(HAND, 2)) == [[0, 1], [2, 3]]
    assert kept(top_k_filter(HAND, 9)) == [[0, 1, 2, 3]] * 2
    assert kept(top_p_filter(HAND, 0.45)) == [[0], [3]]
    assert kept(top_p_filter(HAND, 0.75)) == [[0, 1], [2, 3]]
    assert kept(top_p_filter(HAND, 0.85)) == [[0, 1, 2], [1, 2, 3]]
    assert kept(top_p_filter(HAND, 1.0)) == [[0, 1, 2, 3]] * 2
    assert kept(min_p_filter(HAND, 0.5)) == [[0, 1], [2, 3]]  # threshold 0.25
    assert kept(min_p_filter(HAND, 0.2)) == [[0, 1, 2], [1, 2, 3]]  # threshold 0.1
    seen = torch.tensor([[True, True, False], [False, False, False]])
    raw = torch.tensor([[2.0, -1.0, 0.5], [2.0, -1.0, 0.5]])
    assert apply_repetition_penalty(raw, seen, 2.0).tolist() == [[1.0, -2.0, 0.5], [2.0, -1.0, 0.5]]


def test_sampling_follows_the_filtered_distribution():
    logits = HAND[:1].expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    ids, logprobs = sample_next_token(logits, SamplingParams(temperature=1.0, top_p=0.85), generator=g)
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.015)
    assert torch.allclose(logprobs, HAND[0, ids], atol=1e-6)  # the model's own log-probability
    hot = sample_next_token(logits, SamplingParams(temperature=100.0), generator=g)[0]
    assert (torch.bincount(hot, minlength=4).float() / len(hot) - 0.25).abs().max() < 0.02  # ~uniform
    for k_row in (sample_next_token(HAND, SamplingParams(temperature=0))[0], sample_next_token(
            HAND, SamplingParams(temperature=1.0, top_k=1), generator=g)[0]):
        assert k_row.tolist() == [0, 3]  # greedy, and top-k 1, pick each row's most likely token


def test_extreme_temperature_and_penalty_stay_finite():
    """Tiny temperatures and extreme penalties are valid flags: no logit may overflow to ±inf (a NaN
    distribution). A vanishing temperature is greedy in the limit, with any filter on top."""
    g = torch.Generator().manual_seed(0)
    for params in (SamplingParams(temperature=1e-40), SamplingParams(temperature=1e-40, top_k=3, top_p=0.5, min_p=0.1)):
        assert sample_next_token(HAND, params, generator=g)[0].tolist() == [0, 3]
    mixed = torch.tensor([[2.0, -3.0, 0.5, -0.1], [-2.0, 3.0, -0.5, 0.1]])
    seen = torch.ones(mixed.shape, dtype=torch.bool)
    for penalty in (1e-40, 1e40):  # divides the positive logits, multiplies the negative ones
        assert torch.isfinite(apply_repetition_penalty(mixed, seen, penalty)).all()
        for t in (1.0, 1e-40):
            ids, logprobs = sample_next_token(mixed, SamplingParams(temperature=t, repetition_penalty=penalty), seen, g)
            assert torch.isfinite(logprobs).all() and ids.min() >= 0 and ids.max() < 4


def test_stop_strings_cut_exactly_and_hold_back_only_a_possible_start():
    tok = build_tokenizer("gpt2")
    text = ENGLISH.read_text(encoding="utf-8")[5000:9000]
    stop = text[1800:1815]  # 15 characters of real text, several gpt2 tokens long
    assert len(tok.encode(stop)) > 2
    stream, shown = TextStream(["@@never@@", stop]), []
    for t in tok.encode(text):
        shown.append(stream.feed(tok.token_bytes(t)))
        if stream.stopped:
            break
        assert not stream.pending or any(s.startswith(stream.pending) for s in stream.stops)  # held back
    assert stream.stopped and "".join(shown) == stream.text == text[:text.index(stop)]


def test_streaming_korean_bytes_never_prints_a_broken_character():
    tok = build_tokenizer("byte")
    text = KOREAN.read_text(encoding="utf-8")[:3000]
    stream, chunks = TextStream(), []
    for t in tok.encode(text):
        chunks.append(stream.feed(tok.token_bytes(t)))
    assert sum(1 for c in chunks if c == "") > 1000  # a syllable's first bytes produce nothing yet
    assert all("\ufffd" not in c for c in chunks) and "".join(chunks) + stream.finish() == text
    cut = TextStream()
    assert cut.feed("가".encode()[:2]) == "" and cut.finish() == ""  # an unfinished last character is dropped


def test_complete_reports_eos_stop_and_length(char_model):
    model, tok = char_model
    prompt = "ROMEO:\n"
    engine = Engine(model)
    plain = complete(engine, tok, prompt, tok.encode(prompt), 50, GREEDY)
    s = plain.samples[0]
    assert s.finish_reason == "length" and len(s.token_ids) == 50 and s.text == tok.decode(s.token_ids)
    # each logprob is the model's own (temperature 1) for the token it chose: one plain forward, no cache
    ids = tok.encode(prompt) + s.token_ids  # 57 <= block_size: one forward sees it all
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0]
    ref = torch.log_softmax(logits.float(), -1)[len(tok.encode(prompt)) - 1:-1].gather(-1, torch.tensor(s.token_ids)[:, None])
    assert torch.allclose(torch.tensor(s.logprobs), ref.squeeze(-1), atol=1e-4), (s.logprobs[:5], ref[:5])
    eos = s.token_ids[10]  # pretend the 11th token is end-of-text
    ended = complete(engine, tok, prompt, tok.encode(prompt), 50, GREEDY, eos_id=eos).samples[0]
    first = s.token_ids.index(eos)
    assert ended.finish_reason == "eos" and ended.token_ids == s.token_ids[:first + 1]
    assert ended.text == tok.decode(s.token_ids[:first])
    stop = s.text[20:23]
    stopped = complete(engine, tok, prompt, tok.encode(prompt), 50, GREEDY, stops=[stop]).samples[0]
    assert stopped.finish_reason == "stop" and stopped.text == s.text[:s.text.index(stop)]


# inductor writes parallel C++ kernels for 2 threads, serial ones for 1: one model each
@pytest.mark.parametrize("which, threads", [("char_model", 1), ("rope_model", 2)])
def test_compiled_decode_step_on_cpu_matches_eager(request, which, threads):
    """The compiled step (inductor on CPU) gives eager's text and logits, learned positions and RoPE +
    RMSNorm + SwiGLU, past block_size (64; 32 for the RoPE model: re-prefills in between), compiled
    once: every step has the same shapes, its position is a tensor."""
    import torch._dynamo

    model, tok = request.getfixturevalue(which)
    prompt = tok.encode("ROMEO:")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch_threads(threads):
        compiled = Engine(model, compile_step=True)
        assert compiled.compiled
        ids_c, logits_c = run(compiled, prompt, 90)
        ids_e, logits_e = run(Engine(model), prompt, 90)
    assert torch.equal(ids_c, ids_e)
    assert max((a - b).abs().max().item() for a, b in zip(logits_c, logits_e, strict=True)) < 1e-4
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no recompilation per position


def test_decoding_on_two_threads_gives_the_one_thread_text(char_model):
    """The thread count changes how sums are split, so the logits' last bits: the text must not change."""
    model, tok = char_model
    prompt, params = tok.encode("ROMEO:"), SamplingParams(temperature=0.8, top_k=30)
    results = {}
    for threads in (1, 2):
        with torch_threads(threads):
            results[threads] = run(Engine(model, num_samples=3), prompt, 150, params, seed=11)
    (ids_1, logits_1), (ids_2, logits_2) = results[1], results[2]
    assert torch.equal(ids_1, ids_2)
    assert all(torch.allclose(a, b, atol=2e-5, rtol=1e-5) for a, b in zip(logits_1, logits_2, strict=True))


def test_the_exponential_race_draws_tokens_with_their_probabilities():
    """The compiled step's draw without a generator: argmax p / E, E ~ Exp(1), picks i with probability
    p_i (checked against the softmax over 40,000 draws), through the same filters as eager sampling."""
    from gptkit.generate import sample_with_noise

    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0]).expand(40_000, 5)
    g = torch.Generator().manual_seed(0)
    noise = torch.empty(40_000, 5).exponential_(generator=g)
    ids, logprobs = sample_with_noise(logits, SamplingParams(), None, noise)
    freq = torch.bincount(ids, minlength=5) / 40_000
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.01), freq
    assert torch.allclose(logprobs, torch.log_softmax(logits[0], -1)[ids])
    top2, _ = sample_with_noise(logits, SamplingParams(top_k=2), None, noise)
    assert set(top2.tolist()) == {0, 1}
    greedy, _ = sample_with_noise(logits, SamplingParams(temperature=0), None, noise)
    assert (greedy == 0).all()


def test_a_compiled_job_samples_inside_the_step_compiled_once_before_timing(char_model, monkeypatch):
    """The compiled step includes the sampling (no eager sampling, no host read in the loop), is
    compiled and recorded by `warm_up` before a timer starts, and never recompiles, past block_size
    too; every row's text is its own seed's. Dynamo traces the step whole (fullgraph) and a counting
    backend runs the graph: what is checked is the graph, not inductor's C++ (the decode tests above
    compile that), whose build for this step's sort and cumsum was the suite's slowest on a cold cache."""
    from torch._dynamo.testing import CompileCounter

    import gptkit.generate as gen

    model, tok = char_model
    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=counter, fullgraph=True, dynamic=False))
    torch._dynamo.reset()
    params = SamplingParams(temperature=0.9, top_k=30, top_p=0.95, repetition_penalty=1.1)
    engine = Engine(model, num_samples=2, compile_step=True)
    engine.warm_up(params)
    assert counter.frame_count == 1
    prompt = tok.encode("ROMEO:")
    with pytest.MonkeyPatch.context() as watch:
        watch.setattr(gen, "sample_next_token", lambda *a, **k: pytest.fail("eager sampling in a compiled job"))
        reads = []
        for name in ("item", "tolist"):
            real_read = getattr(torch.Tensor, name)
            watch.setattr(torch.Tensor, name, lambda self, *a, _r=real_read: reads.append(1) or _r(self, *a))
        ids, _ = run(engine, prompt, 100, params, seed=4)  # block_size 64: the window moves twice
    assert counter.frame_count == 1 and not reads
    again, _ = run(engine, prompt, 100, params, seed=4)
    assert torch.equal(ids, again)  # the same seed, the same texts
    one = Engine(model, num_samples=1, compile_step=True)
    assert torch.equal(run(one, prompt, 100, params, seed=row_seed(4, 1))[0][0], ids[1])  # row 1 is its seed's
