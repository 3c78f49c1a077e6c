"""Valid UTF-8 by construction: the per-state token masks agree with Python's strict UTF-8 decoder,
sampled bytes always decode strictly for any vocabulary and logits, and an undertrained Korean BPE
samples 10,000 tokens without one U+FFFD (where the same model unmasked breaks characters), through
batches, window restarts, stop strings, the compiled step and the CLI."""

from __future__ import annotations

import codecs
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptkit import checkpoint
from gptkit.completion import complete, utf8_constraint
from gptkit.generate import Engine
from gptkit.sampling import UTF8_STATES, SamplingParams, Utf8Constraint, sample_next_token
from tests.conftest import run_here, torch_threads

# One pending prefix per decoder state, as Python's decoder would hold it: nothing, a 2-, 3- or
# 4-byte lead, the special leads E0, ED, F0, F4. Python's strict decoder is the reference.
PENDING = [b"", b"\xc3", b"\xe1", b"\xf1", b"\xe0", b"\xed", b"\xf0", b"\xf4"]
SINGLE_BYTES = [bytes([b]) for b in range(256)]
# token bytes as a byte-level BPE makes them: pieces of real UTF-8 text, cut anywhere, and raw bytes
utf8_pieces = st.text(max_size=4).map(lambda t: t.encode("utf-8")).flatmap(
    lambda b: st.tuples(st.integers(0, len(b)), st.integers(0, len(b))).map(lambda ij: b[min(ij):max(ij)]))
token = st.one_of(utf8_pieces.filter(bool), st.binary(min_size=1, max_size=4))


def decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8", errors="strict")
        return True
    except UnicodeDecodeError:
        return False


def accepts(pending: bytes, data: bytes) -> bool:
    """Whether `pending + data` can begin valid UTF-8: a strict incremental decoder takes it, and the
    bytes it still holds can be completed. (CPython checks some incomplete tails only once complete,
    e.g. ED A0, a surrogate: so each is completed with one byte from every continuation range
    (80-8F, 90-9F, A0-BF) then 80s.)"""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        decoder.decode(pending + data, final=False)
    except UnicodeDecodeError:
        return False
    tail = decoder.getstate()[0]
    return not tail or any(decodes(tail + bytes([x]) + b"\x80" * k) for x in (0x80, 0x9F, 0xBF) for k in range(3))


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(token, min_size=1, max_size=40))
def test_each_states_mask_is_exactly_what_a_strict_decoder_accepts(tokens):
    c = Utf8Constraint(tokens)
    for s, pending in enumerate(PENDING):
        allowed = [accepts(pending, t) for t in tokens]
        assert (~c.forbidden[s]).tolist() == allowed, (s, tokens)


def test_every_state_accepts_some_single_byte_and_the_byte_vocabulary_counts():
    c = Utf8Constraint(SINGLE_BYTES)
    # ASCII + C2-DF + E0-EF + F0-F4 leads; then 64 continuation bytes, or E0's A0-BF, ED's 80-9F,
    # F0's 90-BF, F4's 80-8F: the counts of the Unicode standard's table of well-formed sequences
    assert (~c.forbidden).sum(1).tolist() == [128 + 30 + 16 + 5, 64, 64, 64, 32, 32, 48, 16]


@settings(max_examples=60, deadline=None)
@given(extra=st.lists(token, max_size=60), seed=st.integers(0, 2**32 - 1),
       temperature=st.sampled_from([0.0, 0.7, 1.0, 3.0]), top_k=st.sampled_from([None, 1, 5]),
       scale=st.sampled_from([1.0, 10.0]))
def test_sampled_bytes_always_decode_strictly(extra, seed, temperature, top_k, scale):
    """Any vocabulary holding the 256 single bytes, any logits (here random, sharp or flat, each row
    and step its own), any filter: the bytes chosen form valid UTF-8 at every step."""
    vocab = SINGLE_BYTES + extra
    c = Utf8Constraint(vocab)
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(temperature=temperature, top_k=top_k)
    rows, states = 4, torch.zeros(4, dtype=torch.long)
    decoders = [codecs.getincrementaldecoder("utf-8")("strict") for _ in range(rows)]
    out = [b""] * rows
    with torch_threads(1):
        for _ in range(30):
            logits = torch.randn(rows, len(vocab), generator=gen) * scale
            ids, _ = sample_next_token(logits, params, generator=gen, blocked=c.blocked(states))
            states = c.advance(states, ids)
            for r, i in enumerate(ids.tolist()):
                decoders[r].decode(vocab[i])  # raises at the first invalid byte
                out[r] += vocab[i]
    for r in range(rows):
        if states[r] == 0:  # nothing pending: the whole sample is valid text
            out[r].decode("utf-8")


def test_a_row_with_nothing_allowed_samples_unmasked():
    """A vocabulary without continuation bytes cannot finish a lead byte: that row is left unmasked
    rather than turned into a softmax over nothing (NaN)."""
    c = Utf8Constraint([b"a", b"\xea", b"b"])
    states = c.advance(torch.zeros(2, dtype=torch.long), torch.tensor([1, 0]))  # row 0: after a lead byte
    blocked = c.blocked(states)
    assert blocked.tolist() == [[False, False, False], [False, False, False]]  # row 1: all allowed anyway
    ids, _ = sample_next_token(torch.zeros(2, 3), SamplingParams(), blocked=blocked,
                               generator=torch.Generator().manual_seed(0))
    assert c.advance(states, ids)[0] == 0  # the invalid token restarts the decoder


@pytest.fixture(scope="module")
def korean_bpe(korean_bpe_run):
    model, tok, _ = checkpoint.load_for_inference(korean_bpe_run)
    return model, tok


def broken(texts: list[str]) -> int:
    return sum(t.count("\ufffd") for t in texts)


def test_ten_thousand_korean_tokens_without_a_broken_character(korean_bpe):
    """10 rows x 1,000 tokens at temperature 1 from the undertrained Korean BPE (block 32: a window
    restart every 16 tokens): no U+FFFD, while the same model and seed unmasked break characters.
    The log-probabilities stay the model's own, unmasked."""
    model, tok = korean_bpe
    engine = Engine(model, num_samples=10)
    prompt = "그날 밤"
    args = (engine, tok, prompt, tok.encode(prompt), 1000, SamplingParams(temperature=1.0), 7)
    with torch_threads(1):
        masked = complete(*args, utf8=utf8_constraint(tok, model.config.vocab_size))
        free = complete(*args)
    assert masked.generated_tokens == 10_000
    for s in masked.samples:  # valid as a whole (the last token may leave a character unfinished)
        codecs.getincrementaldecoder("utf-8")("strict").decode(tok.decode_bytes(s.token_ids), final=False)
    assert broken([s.text for s in masked.samples]) == 0
    assert broken([s.text for s in free.samples]) > 20  # what the mask prevents
    assert sum("가" <= ch <= "힣" for s in masked.samples for ch in s.text) > 2000
    # logprobs: the unmasked model's. Rerun row 0 alone and compare at every step
    with torch_threads(1):
        steps = list(Engine(model).generate(tok.encode(prompt), 50, SamplingParams(temperature=1.0),
                                            masked.samples[0].seed, utf8_constraint(tok, model.config.vocab_size)))
    raw = torch.stack([torch.log_softmax(st_.logits[0].float(), -1)[st_.ids[0]] for st_ in steps])
    assert torch.allclose(raw, torch.stack([st_.logprobs[0] for st_ in steps]))
    assert [int(st_.ids[0]) for st_ in steps] == masked.samples[0].token_ids[:50]


def test_stop_strings_with_the_mask(korean_bpe):
    model, tok = korean_bpe
    utf8 = utf8_constraint(tok, model.config.vocab_size)
    engine = Engine(model, num_samples=3)
    params, ids = SamplingParams(temperature=1.0), tok.encode("그")
    with torch_threads(1):
        free = complete(engine, tok, "그", ids, 120, params, 3, utf8=utf8)
        stop = free.samples[1].text[30:32]
        cut = complete(engine, tok, "그", ids, 120, params, 3, stops=[stop], utf8=utf8)
    assert cut.samples[1].finish_reason == "stop"
    assert cut.samples[1].text == free.samples[1].text[:free.samples[1].text.index(stop)]


def test_the_compiled_step_samples_the_same_valid_text(korean_bpe):
    import torch._dynamo

    model, tok = korean_bpe
    utf8, ids, params = utf8_constraint(tok, model.config.vocab_size), tok.encode("그날"), SamplingParams(temperature=1.0)
    torch._dynamo.reset()
    with torch_threads(1):
        compiled = [int(s.ids[0]) for s in Engine(model, compile_step=True).generate(ids, 200, params, 5, utf8)]
        eager = [int(s.ids[0]) for s in Engine(model).generate(ids, 200, params, 5, utf8)]
    assert compiled == eager
    assert "\ufffd" not in tok.decode(compiled)


def test_the_cli_masks_by_default_and_allow_invalid_utf8_turns_it_off(korean_bpe_run, capsys):
    args = ("sample", "-c", str(korean_bpe_run), "-p", "그날 밤", "-n", "300", "--temperature", "1", "--top-k", "0",
            "--num-samples", "4", "--seed", "1", "--json", "--threads", "1")
    rows = {}
    for extra in ((), ("--allow-invalid-utf8",)):  # the CLI's default, not the process's: in this process
        proc = run_here(capsys, *args, *extra)
        assert proc.returncode == 0, proc.stderr
        rows[extra] = [json.loads(line) for line in proc.stdout.splitlines()]
    masked, free = rows[()], rows[("--allow-invalid-utf8",)]
    assert broken([r["text"] for r in masked]) == 0 and broken([r["text"] for r in free]) > 0
    assert all(len(r["token_ids"]) == 300 for r in masked + free)


def test_no_mask_for_a_char_tokenizer_and_ids_past_the_vocabulary_are_never_chosen(korean_bpe):
    from gptkit.tokenizers.core import CharTokenizer

    assert utf8_constraint(CharTokenizer("ab"), 2) is None
    _, tok = korean_bpe
    c = utf8_constraint(tok, tok.vocab_size + 8)  # a model with padded embeddings
    assert c.forbidden.shape == (UTF8_STATES, tok.vocab_size + 8) and bool(c.forbidden[:, tok.vocab_size:].all())
