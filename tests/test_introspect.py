"""What `inspect` computes, on a checkpoint trained for real: the summary's numbers, the forward pass
run by hand, attention, logit lens, direct logit attribution and FFN-output neighbours."""

from __future__ import annotations

import math

import pytest
import torch

from gptkit import checkpoint
from gptkit.config import ModelConfig
from gptkit.introspect.neighbors import neighbours, training_text
from gptkit.introspect.trace import analyze, attribution, summarize, trace
from gptkit.model import GPT, manual_attention
from tests.conftest import SHAKESPEARE

PROMPT = "KING RICHARD III:\nWhat says the"


@pytest.fixture(scope="module")
def loaded(trained_run):
    model, tokenizer, info = checkpoint.load_for_inference(trained_run["run_dir"])
    return model, tokenizer, info


def test_textbook_attention_weights_and_the_causal_mask():
    """softmax(X·Xᵀ)·X with identity projections, no scaling, no mask — the classic six-token example
    ("Your journey starts with one step") — and what the causal mask changes: each row renormalised
    over the keys it may see."""
    x = torch.tensor([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                      [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])
    context, w = manual_attention(x, x, x, scale=1.0, causal=False)
    assert torch.allclose(context[0], torch.tensor([0.4421, 0.5931, 0.5790]), atol=5e-5)
    assert torch.allclose(context[-1], torch.tensor([0.4177, 0.6503, 0.5645]), atol=5e-5)
    assert torch.allclose(w[1], torch.tensor([0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581]), atol=5e-5)
    _, causal = manual_attention(x, x, x, scale=1.0, causal=True)
    for i in range(6):
        assert torch.allclose(causal[i, :i + 1], w[i, :i + 1] / w[i, :i + 1].sum(), atol=1e-6)
        assert torch.all(causal[i, i + 1:] == 0)


def test_summary_counts_parameters_from_the_header_alone(loaded, trained_run, monkeypatch):
    model, _, info = loaded
    monkeypatch.setattr(checkpoint, "load_tensors", lambda *a, **k: pytest.fail("summary read tensor data"))
    s = summarize(info)
    params = s["params"]
    padding = model.transformer.wte.weight.size(0) - model.config.vocab_size  # rows the model pads on, never saved
    assert params["total"] == sum(p.numel() for p in model.parameters()) - padding * model.config.n_embd
    assert params["non_embedding"] == model.num_params(non_embedding=True)
    assert sum(params["parts"].values()) == params["total"]
    cfg = model.config
    for part in ("attention Q", "attention K", "attention V", "attention output (c_proj)"):
        assert params["parts"][part] == cfg.n_layer * (cfg.n_embd * cfg.n_embd + cfg.n_embd)
    assert s["tokenizer"] == {"kind": "char", "name": "char", "vocab_size": 65}
    assert s["training"]["step"] == trained_run["result"].step
    assert s["file_bytes"] == info.path.stat().st_size and s["dtypes"] == {"F32": len(model.state_dict()) - 1}
    evals = [e for e in trained_run["events"] if e["event"] == "eval"]
    assert [p["step"] for p in s["loss_curve"]] == [e["step"] for e in evals]
    assert [p["val_loss"] for p in s["loss_curve"]] == [e["val_loss"] for e in evals]


def test_forward_by_hand_equals_the_model_and_attention_is_causal(loaded):
    model, tokenizer, _ = loaded
    ids = tokenizer.encode(PROMPT)
    tr = trace(model, ids)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    assert torch.allclose(tr.logits, logits[0], atol=1e-4)
    T = len(ids)
    assert len(tr.weights) == model.config.n_layer
    for w in tr.weights:
        assert w.shape == (model.config.n_head, T, T)
        assert torch.allclose(w.sum(-1), torch.ones(model.config.n_head, T), atol=1e-5)
        assert torch.all(w.triu(diagonal=1) == 0)
        assert w.tril(diagonal=-1).abs().sum() > 0  # it does look back, not only at itself


def test_logit_lens_ends_at_the_models_prediction(loaded):
    model, tokenizer, _ = loaded
    _, res = analyze(model, tokenizer, PROMPT, k=5)
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([tokenizer.encode(PROMPT)]))[0][0, -1], -1)
    p, i = probs.topk(5)
    lens = res["logit_lens"]
    assert [r["stage"] for r in lens] == ["embedding"] + [f"block {n}" for n in range(model.config.n_layer)]
    assert [t["id"] for t in lens[-1]["top"]] == i.tolist() == [t["id"] for t in res["next_token"]]
    assert torch.allclose(torch.tensor([t["prob"] for t in lens[-1]["top"]]), p, atol=1e-5)
    assert lens[-1]["target_prob"] == pytest.approx(float(p[0]), abs=1e-5)
    assert lens[0]["top"] != lens[-1]["top"]  # the blocks change the prediction


def test_attributions_sum_to_the_final_logit(loaded):
    model, tokenizer, _ = loaded
    tr, res = analyze(model, tokenizer, PROMPT)
    a = res["attribution"]
    assert a["token"]["id"] == res["next_token"][0]["id"]
    names = [t["name"] for t in a["terms"]]
    assert names[:2] == ["token embedding", "position embedding"] and names[-1] == "ln_f bias"
    assert len(names) == 2 + 2 * model.config.n_layer + 1
    assert a["sum"] == pytest.approx(a["logit"], abs=1e-4)
    assert a["logit"] == pytest.approx(float(tr.logits[-1].max()), abs=1e-6)
    other = attribution(model, tokenizer, tr, res["next_token"][3]["id"])  # any token's logit splits the same way
    assert other["sum"] == pytest.approx(other["logit"], abs=1e-4)
    assert max(abs(t["value"]) for t in a["terms"][2:-1]) > 0.1  # the blocks, not only the embedding, decide


@pytest.mark.parametrize("kw", [dict(norm="rmsnorm", pos_encoding="rope"), dict(bias=False, mlp="swiglu")])
def test_attribution_is_exact_for_other_architectures(kw):
    """The linearised final norm holds for RMSNorm and bias-free LayerNorm too (weights at init)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=30, **kw)).eval()
    tr = trace(model, [3, 1, 4, 1, 5, 9, 2, 6])
    from gptkit.tokenizers.core import ByteTokenizer

    a = attribution(model, ByteTokenizer(), tr, 7)
    assert a["sum"] == pytest.approx(a["logit"], abs=1e-5)


def test_neighbours_find_the_copied_position_first(loaded):
    model, tokenizer, info = loaded
    source = training_text(info)
    assert source.scope == "training split" and source.warnings == []
    text, whole = source.read(2_000_000)
    assert whole
    end = 2203  # a prompt copied from the training text, ending at character (= token) `end`
    prompt = text[end - 15:end + 1]
    assert text.count(prompt) == 1
    tr, _ = analyze(model, tokenizer, prompt)
    nb = neighbours(model, tokenizer, tr, source, k=8, max_positions=2500)
    assert nb["positions_scanned"] == 2500 and nb["window"] == 16
    for block in nb["blocks"]:
        first, second = block["neighbors"][:2]
        assert first["position"] == end and first["context"] == prompt
        assert first["score"] == pytest.approx(1.0, abs=1e-5) and second["score"] < first["score"] - 1e-4
        assert first["next"]["text"] == text[end + 1]
    assert sum(a["count"] for a in nb["approx"]) == 8 * model.config.n_layer
    assert sum(a["prob"] for a in nb["approx"]) == pytest.approx(1.0)
    # the model's side recomputed from a plain forward of the prompt, KL(q || p) from the counts
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([tokenizer.encode(prompt)]))[0][0, -1].double(), -1)
    assert nb["model_top"]["id"] == int(p.argmax()) and nb["model_top"]["prob"] == pytest.approx(p.max().item(), rel=1e-4)
    q = {a["id"]: a["count"] / (8 * model.config.n_layer) for a in nb["approx"]}
    kl = sum(qi * math.log(qi / p[i].item()) for i, qi in q.items())
    assert nb["kl_approx_model"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert nb["top1_agree"] == (max(q, key=q.get) == int(p.argmax()))


def test_the_training_text_is_streamed_from_disk_as_far_as_it_is_read(loaded, tmp_path):
    """The training split and the held-out part, read in blocks, are the whole text cut where
    training cut it (`split_point` on the text as one string); a 20 MB --data file is not held whole
    to give the 1,000 characters a scan asks for (tracemalloc's peak, its sha256 pass included)."""
    import tracemalloc

    from gptkit.data.dataset import split_point
    from gptkit.introspect.neighbor_eval import eval_texts

    _, _, info = loaded
    text = SHAKESPEARE.read_bytes().decode("utf-8")  # the file as one string, as inspect read it before
    cut = split_point(text, info.meta["train_config"]["val_fraction"])
    assert training_text(info).read(len(text)) == (text[:cut], True)
    texts = eval_texts(info, None)
    assert texts.train.read(len(text)) == (text[:cut], True) and texts.held_out.read(len(text)) == (text[cut:], True)
    assert texts.held_out.read(500) == (text[cut:cut + 500], False)
    big = tmp_path / "big.txt"
    big.write_text(text * 18, encoding="utf-8")
    tracemalloc.start()
    try:
        source = training_text(info, big)
        got = source.read(1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert source.scope == "whole file" and "differs" in source.warnings[0] and got == (text[:1000], False)
    assert peak < 8 * 2**20, peak  # a few blocks; the whole text as bytes and as a string was 40 MB
