"""`gptkit convert`: Hugging Face GPT-2 folders in and out, checked against transformers itself.

A small randomly initialised GPT2LMHeadModel (saved with save_pretrained) and the session's char
model trained for real on tinyshakespeare go through the converter; logits, greedy generations,
tensors and tokenizers are compared with what transformers computes from the converted files.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptkit import checkpoint
from gptkit.config import ModelConfig, to_dict
from gptkit.errors import InputError, UsageError
from gptkit.generate import generate
from gptkit.hf import gpt2
from gptkit.hf.convert import convert
from gptkit.tokenizers import build_tokenizer
from gptkit.tokenizers.stored import load_tokenizer
from tests.conftest import ENGLISH, SHAKESPEARE, assert_one_line_error, run_cli, run_here

ATOL = 1e-5  # fp32 logits: gptkit vs transformers


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def write_gpt2_folder(folder, n_layer: int = 2, n_head: int = 4, n_embd: int = 64, n_positions: int = 128,
                      std: float = 0.3, shards: int = 1):
    """A random GPT-2 with GPT-2's real vocabulary, laid out as transformers' save_pretrained lays it
    out (GPT2LMHeadModel's names, Conv1D matrices stored (in, out), the tied lm_head not stored, or
    `shards` files listed in model.safetensors.index.json), written with safetensors and json alone:
    the tests that need no reference run without transformers. The names are written out here, not
    taken from gptkit.hf; test_the_hand_made_folder_is_what_save_pretrained_writes holds them to
    transformers' own."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    C, V = n_embd, 50257

    def normal(*shape):
        return torch.randn(*shape, generator=g) * std

    tensors = {"transformer.wte.weight": normal(V, C), "transformer.wpe.weight": normal(n_positions, C)}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        for part, (n_in, n_out) in {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C),
                                    "mlp.c_proj": (4 * C, C)}.items():
            tensors[f"{h}{part}.weight"], tensors[f"{h}{part}.bias"] = normal(n_in, n_out), normal(n_out) * 0.1
        for ln in ("ln_1", "ln_2"):
            tensors[f"{h}{ln}.weight"], tensors[f"{h}{ln}.bias"] = 1 + normal(C) * 0.1, normal(C) * 0.1
    tensors["transformer.ln_f.weight"], tensors["transformer.ln_f.bias"] = 1 + normal(C) * 0.1, normal(C) * 0.1
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
              "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "n_positions": n_positions, "n_inner": None,
              "vocab_size": V, "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
              "attn_pdrop": 0.1, "initializer_range": std, "bos_token_id": 50256, "eos_token_id": 50256,
              "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
              "summary_type": "cls_index", "use_cache": True, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    names = list(tensors)
    weight_map = {}
    for s in range(shards):
        part = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        mine = names[s::shards]
        save_file({n: tensors[n] for n in mine}, folder / part, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(mine, part))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return write_gpt2_folder(tmp_path_factory.mktemp("made") / "gpt2-small-random")


@pytest.fixture(scope="module")
def hf_gpt2(transformers, tmp_path_factory):
    """A random GPT-2 of small dims with GPT-2's real vocabulary, saved as transformers saves it.
    initializer_range 0.3 (not 0.02) so greedy decoding wanders over many tokens instead of one."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=50257,
                                  initializer_range=0.3)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hf") / "gpt2-small-random"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def no_transformers(tmp_path_factory):
    """A PYTHONPATH entry that makes `import transformers` fail: the CLI must not need it."""
    root = tmp_path_factory.mktemp("block")
    (root / "transformers").mkdir()
    (root / "transformers" / "__init__.py").write_text("raise ImportError('gptkit convert imported transformers')\n")
    return {"PYTHONPATH": str(root)}


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _gpt2_ids(n: int) -> list[int]:
    return build_tokenizer("gpt2").encode(SHAKESPEARE.read_text(encoding="utf-8")[:2000])[:n]


def test_the_hand_made_folder_is_what_save_pretrained_writes(hf_gpt2, gpt2_folder, tmp_path):
    """The folder the tests without transformers convert has save_pretrained's files, tensor names,
    shapes and dtypes, and the same value of every config field that decides the architecture; its
    shards are laid out as save_pretrained shards them."""
    folder, ref = hf_gpt2

    def layout(f):
        return {k: (tuple(v.shape), v.dtype) for k, v in load_file(f).items()}

    assert layout(gpt2_folder / "model.safetensors") == layout(folder / "model.safetensors")
    mine, theirs = (json.loads((f / "config.json").read_text()) for f in (gpt2_folder, folder))
    for key in [*gpt2.HF_DEFAULTS, "model_type", "architectures", "bos_token_id", "eos_token_id"]:
        assert mine.get(key, gpt2.HF_DEFAULTS.get(key)) == theirs.get(key, gpt2.HF_DEFAULTS.get(key)), key
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    made = write_gpt2_folder(tmp_path / "made", shards=3)
    for f in (tmp_path / "sharded", made):
        index = json.loads((f / "model.safetensors.index.json").read_text())
        assert set(index) >= {"metadata", "weight_map"} and not (f / "model.safetensors").exists()
        assert sorted(index["weight_map"]) == sorted(layout(folder / "model.safetensors"))
        assert all((f / n).is_file() for n in index["weight_map"].values())


def test_hf_to_gptkit_matches_transformers_logits_and_greedy(hf_gpt2, tmp_path, no_transformers):
    folder, ref = hf_gpt2
    dst = tmp_path / "converted"
    proc = run_cli("convert", str(folder), str(dst), env=no_transformers)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "gpt2 tokenizer" in proc.stderr
    model, tok, info = checkpoint.load_for_inference(dst)
    assert tok.name == "gpt2" and info.model_config.vocab_size == 50257 and info.model_config.block_size == 128
    assert info.state["step"] == 0 and info.state["converted_from"]["path"] == str(folder.resolve())

    ids = torch.tensor([_gpt2_ids(100)])  # real text, 100 GPT-2 tokens
    with torch.no_grad():
        ours, theirs = model(ids)[0], ref(ids).logits
    assert ours.shape == theirs.shape == (1, 100, 50257)
    assert (ours - theirs).abs().max().item() <= ATOL

    prompt = ids[:, :16]
    mine = list(generate(model, prompt[0].tolist(), 64, temperature=0))
    out = ref.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=64,
                       eos_token_id=None, pad_token_id=0)
    assert mine == out[0, 16:].tolist()
    assert len(set(mine)) > 20  # a real sequence, not one token repeated


def test_hf_gptkit_hf_round_trip_is_byte_identical_and_loads_cleanly(hf_gpt2, transformers, tmp_path, capfd):
    folder, ref = hf_gpt2
    convert(folder, tmp_path / "ck")
    back = tmp_path / "back"
    result = convert(tmp_path / "ck", back)
    assert result.files[:3] == ["model.safetensors", "config.json", "generation_config.json"]
    before, after = load_file(folder / "model.safetensors"), load_file(back / "model.safetensors")
    assert sorted(before) == sorted(after)
    for name in before:
        assert _same_bytes(before[name], after[name]), name
    old_cfg, new_cfg = (json.loads((p / "config.json").read_text()) for p in (folder, back))
    for key in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "activation_function", "eos_token_id"):
        assert old_cfg[key] == new_cfg[key], key

    capfd.readouterr()
    model, loading = transformers.AutoModelForCausalLM.from_pretrained(back, output_loading_info=True)
    assert not any(loading.values()), loading  # no missing, unexpected or mismatched keys
    report = capfd.readouterr().err.lower()
    assert "missing" not in report and "unexpected" not in report and "not initialized" not in report
    ids = torch.tensor([_gpt2_ids(64)])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, ref(ids).logits)

    # GPT-2's tokenizer files, rebuilt from the tiktoken ranks, tokenize exactly like tiktoken
    hf_tok = transformers.AutoTokenizer.from_pretrained(back)
    ours = build_tokenizer("gpt2")
    texts = [SHAKESPEARE.read_text(encoding="utf-8")[:20000], ENGLISH.read_text(encoding="utf-8")[:20000],
             "그날 밤, 그는 아무 말도 하지 않았다.  \n\n  tabs\tand   spaces 12345 don't"]
    for text in texts:
        ids = hf_tok(text)["input_ids"]
        assert ids == ours.encode(text)
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == ours.eot_id == 50256
    assert convert(back, tmp_path / "again.safetensors").tokenizer == "gpt2"  # its vocab.json is GPT-2's: accepted


def test_trained_checkpoint_to_hf_matches_logits_and_back(trained_run, transformers, tmp_path, capfd,
                                                          no_transformers):
    run = trained_run["run_dir"]
    dst = tmp_path / "hf-shakespeare"
    proc = run_cli("convert", str(run), str(dst), env=no_transformers)
    assert proc.returncode == 0, proc.stderr
    assert (dst / "gptkit_tokenizer.json").is_file() and not (dst / "vocab.json").exists()

    capfd.readouterr()
    ref, loading = transformers.AutoModelForCausalLM.from_pretrained(dst, output_loading_info=True)
    assert not any(loading.values()), loading
    assert "missing" not in capfd.readouterr().err.lower()
    ref.eval()
    model, tok, _ = checkpoint.load_for_inference(run)
    assert load_tokenizer(dst / "gptkit_tokenizer.json").to_dict() == tok.to_dict()
    text = SHAKESPEARE.read_text(encoding="utf-8")[5000:5064]
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        diff = (model(ids)[0] - ref(ids).logits).abs().max().item()
    assert diff <= ATOL
    mine = list(generate(model, tok.encode("ROMEO:"), 48, temperature=0))
    prompt = torch.tensor([tok.encode("ROMEO:")])
    out = ref.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=48)
    assert mine == out[0, prompt.size(1):].tolist()

    # and back: the char tokenizer travels in gptkit_tokenizer.json, the tensors are unchanged
    again = convert(dst, tmp_path / "again.safetensors")
    assert again.tokenizer == "char"
    original = checkpoint.load_tensors(checkpoint.read_info(checkpoint.resolve(run)), "model.")
    copy = checkpoint.load_tensors(checkpoint.read_info(again.dst), "model.")
    assert sorted(original) == sorted(copy) and all(_same_bytes(original[k], copy[k]) for k in original)


def _untrained(path, tokenizer):
    from gptkit.model import GPT

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    checkpoint.save(path, GPT(cfg), {"model_config": to_dict(cfg), "tokenizer": tokenizer.to_dict()})
    return path


@pytest.mark.parametrize("kind", ["bpe", "byte", "cl100k_base"])
def test_tokenizers_without_a_hf_twin_travel_in_gptkit_tokenizer_json_and_back(kind, request, tmp_path):
    """A bpe trained for real (on Korean), bytes, and a tiktoken encoding other than gpt2: the export
    carries each one's own tokenizer and end-of-text id, and the way back gives the same checkpoint."""
    import tiktoken

    src = (request.getfixturevalue("korean_bpe_run") if kind == "bpe"
           else _untrained(tmp_path / "src.safetensors", build_tokenizer(kind)))
    info = checkpoint.read_info(checkpoint.resolve(src))
    tokenizer = info.meta["tokenizer"]
    result = convert(src, tmp_path / "hf")
    assert result.tokenizer == tokenizer["name"] and "vocab.json" not in result.files
    assert load_tokenizer(tmp_path / "hf" / "gptkit_tokenizer.json").to_dict() == tokenizer
    eot = tiktoken.get_encoding(kind).eot_token if kind == "cl100k_base" else None  # bpe and byte have none
    for name in ("config.json", "generation_config.json"):
        config = json.loads((tmp_path / "hf" / name).read_text())
        assert config["eos_token_id"] == config["bos_token_id"] == eot, name
    back = convert(tmp_path / "hf", tmp_path / "back.safetensors")
    assert back.tokenizer == result.tokenizer
    again = checkpoint.read_info(back.dst)
    assert again.meta["tokenizer"] == tokenizer and again.model_config == info.model_config
    original, copy = (checkpoint.load_tensors(i, "model.") for i in (info, again))
    assert sorted(original) == sorted(copy) and all(_same_bytes(original[k], copy[k]) for k in original)


def test_converted_gpt2_samples_inspects_and_fine_tunes(gpt2_folder, tmp_path, capsys):
    dst = tmp_path / "gpt2-random"
    convert(gpt2_folder, dst)
    model, tok, _ = checkpoint.load_for_inference(dst)
    expected = tok.decode(list(generate(model, tok.encode("ROMEO:"), 12, temperature=0)))
    proc = run_here(capsys, "sample", "-c", str(dst), "-n", "12", "--temperature", "0", "--prompt", "ROMEO:",
                    "--no-echo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n") == expected.rstrip("\n")

    proc = run_here(capsys, "inspect", str(dst), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary["model_config"]["n_embd"] == 64 and summary["has_optimizer_state"] is False

    text = tmp_path / "shakespeare-200k.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    store = tmp_path / "store"
    proc = run_here(capsys, "train", str(text), "--init-from", str(dst), "--run", "ft", "--store", str(store),
                    "--max-iters", "4", "--eval-interval", "4", "--eval-iters", "1", "--batch-size", "2",
                    "--quiet", "--device", "cpu", "--no-compile")
    assert proc.returncode == 0, proc.stderr
    info = checkpoint.read_info(store / "ft" / checkpoint.LAST)
    assert info.state["step"] == 4 and info.meta["tokenizer"]["name"] == "gpt2"
    assert info.model_config.n_embd == 64 and info.model_config.vocab_size == 50257


def test_dtype_option_casts_the_output(trained_run, tmp_path):
    run = trained_run["run_dir"]
    result = convert(run, tmp_path / "bf16", dtype="bfloat16")
    assert result.dtype == "bfloat16"
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    fp32 = checkpoint.load_tensors(checkpoint.read_info(checkpoint.resolve(run)), "model.")
    bf16 = load_file(tmp_path / "bf16" / "model.safetensors")
    assert torch.equal(bf16["transformer.h.0.mlp.c_fc.weight"], fp32["transformer.h.0.mlp.c_fc.weight"].t().bfloat16())
    half = convert(tmp_path / "bf16", tmp_path / "half.safetensors", dtype="float16")
    info = checkpoint.read_info(half.dst)
    assert {t["dtype"] for t in info.tensors.values()} == {"F16"}
    model, _, _ = checkpoint.load_for_inference(half.dst)  # gptkit loads a half checkpoint into fp32
    assert next(model.parameters()).dtype == torch.float32


def _legacy_layout(src, dst):
    """The original GPT-2 upload's layout: no `transformer.` prefix, attention-mask buffers saved,
    and the tied lm_head stored as a copy."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(src / "model.safetensors").items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})


def test_reads_legacy_and_sharded_layouts(gpt2_folder, tmp_path):
    expected = load_file(convert(gpt2_folder, tmp_path / "plain.safetensors").dst)
    _legacy_layout(gpt2_folder, tmp_path / "legacy")
    write_gpt2_folder(tmp_path / "sharded", shards=3)  # the same weights (the same seed), in three files
    for name in ("legacy", "sharded"):
        got = load_file(convert(tmp_path / name, tmp_path / f"{name}.safetensors").dst)
        assert sorted(got) == sorted(expected) and all(_same_bytes(got[k], expected[k]) for k in got), name


@pytest.mark.parametrize("field, value", [
    ("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True),
    ("layer_norm_epsilon", 1e-6), ("n_inner", 100), ("add_cross_attention", True), ("tie_word_embeddings", False),
    ("model_type", "llama"),
])
def test_unrepresentable_hf_configs_name_the_field(field, value):
    base = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 300}
    gpt2.config_from_hf(base)  # the base itself is fine
    with pytest.raises(InputError, match=field):
        gpt2.config_from_hf({**base, field: value})


@pytest.mark.parametrize("field, value", [("pos_encoding", "rope"), ("norm", "rmsnorm"), ("mlp", "swiglu"),
                                          ("bias", False)])
def test_non_gpt2_gptkit_configs_name_the_field(field, value):
    with pytest.raises(InputError, match=field):
        gpt2.hf_config_from(ModelConfig(vocab_size=65, **{field: value}))


def _hostile_pickle(marker) -> bytes:
    """Protocol-0 pickle bytes that create `marker` if anything ever unpickles them."""
    return f"cbuiltins\nopen\n(V{marker}\nVw\ntR.".encode()


def _rope_checkpoint(path):
    from gptkit.model import GPT
    from gptkit.tokenizers.core import ByteTokenizer

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=256, pos_encoding="rope")
    checkpoint.save(path, GPT(cfg), {"model_config": to_dict(cfg), "tokenizer": ByteTokenizer().to_dict()})


def test_bad_input_gives_one_line_errors(gpt2_folder, tmp_path, capsys):
    folder = gpt2_folder
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    shutil.copy(folder / "model.safetensors", no_config / "model.safetensors")
    llama = tmp_path / "llama"
    shutil.copytree(folder, llama)
    (llama / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                   "model_type": "llama"}))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "config.json", pickled / "config.json")
    marker = tmp_path / "UNPICKLED"
    (pickled / "pytorch_model.bin").write_bytes(_hostile_pickle(marker))
    _rope_checkpoint(tmp_path / "rope.safetensors")
    for src, needle in ((no_config, "config.json"), (llama, "model_type"), (pickled, "pickle"),
                        (tmp_path / "rope.safetensors", "pos_encoding")):
        assert_one_line_error(run_here(capsys, "convert", str(src), str(tmp_path / "out")), needle)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_library_refusals(gpt2_folder, tmp_path):
    folder = gpt2_folder
    convert(folder, tmp_path / "ck")
    with pytest.raises(UsageError, match="--overwrite"):
        convert(folder, tmp_path / "ck")
    shutil.copy(tmp_path / "ck" / "last.safetensors", tmp_path / "ck" / "best.safetensors")  # like a trained run
    convert(folder, tmp_path / "ck", overwrite=True)
    assert not (tmp_path / "ck" / "best.safetensors").exists()  # it would shadow the new last for `sample`
    with pytest.raises(UsageError, match="--dtype"):
        convert(folder, tmp_path / "x", dtype="int8")
    other_vocab = tmp_path / "other-vocab"
    shutil.copytree(folder, other_vocab)
    (other_vocab / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(InputError, match="not GPT-2's"):
        convert(other_vocab, tmp_path / "y")
    untied = tmp_path / "untied"
    shutil.copytree(folder, untied)
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1
    save_file(tensors, untied / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="untied"):
        convert(untied, tmp_path / "z")
