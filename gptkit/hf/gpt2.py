"""The Hugging Face GPT-2 format, in one place: weight names, config fields, tokenizer files.

Owns the single map between gptkit's names and transformers' `GPT2LMHeadModel` names (used in both
directions, and by anything else that compares gptkit with transformers), the mapping between
`ModelConfig` and GPT-2's `config.json`, and GPT-2's `vocab.json` / `merges.txt` rebuilt from the
tiktoken ranks. Everything that cannot be represented is rejected with one line naming the field.

Two facts carry the whole conversion: gptkit already uses GPT-2's module names, and GPT-2's
`Conv1D` stores its weight as (in, out) where gptkit's `nn.Linear` stores (out, in), so those four
matrices per block are transposed. `lm_head` is tied to `wte` on both sides and never stored.

Does not read or write files, import torch or transformers (tensors are only transposed and
renamed, through their own methods), or decide the conversion direction (`convert.py` does).
"""

from __future__ import annotations

import json
from typing import Any

from gptkit.config import ModelConfig
from gptkit.errors import InputError, TokenizerError

HF_PREFIX = "transformer."  # GPT2LMHeadModel's body; GPT2Model (e.g. the original gpt2 upload) has none
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers older transformers saved beside the weights: the causal mask and its fill value.
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # both are gptkit's tanh-approximated GELU
LAYER_NORM_EPS = 1e-5  # gptkit's LayerNorm epsilon (model.py)
EOT = "<|endoftext|>"

# GPT2Config's defaults for the fields that decide the architecture: configs written by older
# transformers omit the ones that did not exist yet, and a missing field means the default.
HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    "add_cross_attention": False, "tie_word_embeddings": True,
}


# ---------------------------------------------------------------------------------------------
# Config


def check_representable(cfg: ModelConfig) -> None:
    """Raise unless `cfg` is GPT-2's architecture (learned positions, LayerNorm, GELU MLP, biases)."""
    gpt2 = {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}
    for name, value in gpt2.items():
        if getattr(cfg, name) != value:
            raise InputError(f"the checkpoint has {name}={getattr(cfg, name)!r} but GPT-2 needs {name}={value!r}; "
                             "only GPT-2-shaped gptkit models convert to Hugging Face")


def hf_config_from(cfg: ModelConfig, eot_id: int | None = None, dtype: str = "float32") -> dict[str, Any]:
    """GPT-2's config.json for a gptkit model. eot_id: the tokenizer's end-of-text id, if any."""
    check_representable(cfg)
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPS,
        # gptkit has one dropout for embeddings and residuals and never drops attention weights
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False, "tie_word_embeddings": True, "initializer_range": 0.02,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "use_cache": True,
        "torch_dtype": dtype,  # read by transformers 4.x and 5.x alike
    }


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A gptkit ModelConfig from GPT-2's config.json; anything gptkit cannot represent is refused."""
    if not isinstance(hf, dict):
        raise InputError("config.json must hold a JSON object")
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise InputError(f"config.json has model_type={model_type!r}; gptkit converts only 'gpt2' models")
    c = {**HF_DEFAULTS, **{k: v for k, v in hf.items() if k in HF_DEFAULTS}}
    need = {  # field -> (ok?, what gptkit supports)
        "activation_function": (c["activation_function"] in GELU_TANH, "gelu_new"),
        "layer_norm_epsilon": (c["layer_norm_epsilon"] == LAYER_NORM_EPS, LAYER_NORM_EPS),
        "scale_attn_weights": (c["scale_attn_weights"] is True, True),
        "scale_attn_by_inverse_layer_idx": (c["scale_attn_by_inverse_layer_idx"] is False, False),
        "reorder_and_upcast_attn": (c["reorder_and_upcast_attn"] is False, False),
        "add_cross_attention": (c["add_cross_attention"] is False, False),
        "tie_word_embeddings": (c["tie_word_embeddings"] is True, True),
    }
    for name, (ok, supported) in need.items():
        if not ok:
            raise InputError(f"config.json has {name}={c[name]!r}, which gptkit cannot represent "
                             f"(it needs {json.dumps(supported)})")
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if isinstance(c[name], bool) or not isinstance(c[name], int) or c[name] <= 0:
            raise InputError(f"config.json has {name}={c[name]!r}; it must be a positive whole number")
    if c["n_embd"] % c["n_head"]:
        raise InputError(f"config.json has n_embd={c['n_embd']} not divisible by n_head={c['n_head']}")
    if c["n_inner"] not in (None, 4 * c["n_embd"]):
        raise InputError(f"config.json has n_inner={c['n_inner']!r}; gptkit's MLP is 4 * n_embd = {4 * c['n_embd']}")
    dropout = c["resid_pdrop"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise InputError(f"config.json has resid_pdrop={dropout!r}; it must be a number in [0, 1)")
    return ModelConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], block_size=c["n_positions"],
                       vocab_size=c["vocab_size"], dropout=float(dropout), bias=True, pos_encoding="learned",
                       norm="layernorm", mlp="gelu")


# ---------------------------------------------------------------------------------------------
# Weights


def gpt2_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every stored gptkit tensor of a GPT-2-shaped model -> its shape (nn.Linear: (out, in))."""
    C, V, P = cfg.n_embd, cfg.vocab_size, cfg.block_size
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (P, C)}
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        for name, shape in (("ln_1.weight", (C,)), ("ln_1.bias", (C,)),
                            ("attn.c_attn.weight", (3 * C, C)), ("attn.c_attn.bias", (3 * C,)),
                            ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                            ("ln_2.weight", (C,)), ("ln_2.bias", (C,)),
                            ("mlp.c_fc.weight", (4 * C, C)), ("mlp.c_fc.bias", (4 * C,)),
                            ("mlp.c_proj.weight", (C, 4 * C)), ("mlp.c_proj.bias", (C,))):
            shapes[h + name] = shape
    shapes["transformer.ln_f.weight"] = (C,)
    shapes["transformer.ln_f.bias"] = (C,)
    return shapes


def _is_conv1d(name: str) -> bool:
    return name.startswith("transformer.h.") and name.endswith(CONV1D_WEIGHTS)


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The same tensors as GPT2LMHeadModel stores them: Conv1D weights are (in, out)."""
    return {k: (s[::-1] if _is_conv1d(k) else s) for k, s in gpt2_shapes(cfg).items()}


def _check_names(tensors: dict[str, Any], shapes: dict[str, tuple[int, ...]], where: str) -> None:
    missing = [k for k in shapes if k not in tensors]
    unexpected = [k for k in tensors if k not in shapes]
    if missing or unexpected:
        what = f"lacks tensor {missing[0]!r}" if missing else f"has a tensor gptkit cannot place: {unexpected[0]!r}"
        raise InputError(f"{where} {what} ({len(missing)} missing, {len(unexpected)} unexpected in all)")
    for k, shape in shapes.items():
        if tuple(tensors[k].shape) != shape:
            raise InputError(f"{where}: tensor {k!r} has shape {tuple(tensors[k].shape)}, the config needs {shape}")


def to_hf_state_dict(model_tensors: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """gptkit tensors (GPT.state_dict() names; a tied `lm_head.weight` is dropped) -> GPT2LMHeadModel
    names with the Conv1D matrices transposed to (in, out). Contiguous, so they can be saved."""
    check_representable(cfg)
    tensors = {k: v for k, v in model_tensors.items() if k != "lm_head.weight"}
    _check_names(tensors, gpt2_shapes(cfg), "the gptkit checkpoint")
    return {k: (v.t() if _is_conv1d(k) else v).contiguous() for k, v in tensors.items()}


def from_hf_state_dict(hf_tensors: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """GPT-2 tensors as transformers saves them (with or without the `transformer.` prefix, with or
    without the old `attn.bias` buffers) -> gptkit names, Conv1D matrices transposed to (out, in)."""
    out: dict[str, Any] = {}
    lm_head = None
    for name, t in hf_tensors.items():
        if name == "lm_head.weight":
            lm_head = t
            continue
        if name.endswith(HF_BUFFERS):
            continue  # masks, rebuilt by every implementation; not weights
        key = name if name.startswith(HF_PREFIX) else HF_PREFIX + name
        out[key] = t
    _check_names(out, hf_shapes(cfg), "model.safetensors")
    if lm_head is not None and not (lm_head.shape == out["transformer.wte.weight"].shape
                                    and bool((lm_head == out["transformer.wte.weight"]).all())):
        raise InputError("model.safetensors has an lm_head.weight that differs from wte (untied output "
                         "embedding); gptkit ties them, as GPT-2 does")
    return {k: (v.t() if _is_conv1d(k) else v).contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Tokenizer files (vocab.json + merges.txt, as GPT2Tokenizer reads them)


def is_gpt2_tokenizer(tok: Any) -> bool:
    """True for tiktoken's `gpt2` encoding, which has an exact Hugging Face GPT2Tokenizer twin."""
    return getattr(tok, "kind", None) == "tiktoken" and getattr(tok, "name", None) == "gpt2"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character (vocab.json keys use it)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)  # the unprintable bytes are shifted past Latin-1
            n += 1
    return chars


def gpt2_vocab(tok: Any) -> dict[str, int]:
    """vocab.json's mapping: token text (bytes through bytes_to_unicode) -> id, plus special tokens."""
    b2u = bytes_to_unicode()
    vocab = {"".join(b2u[b] for b in token): rank for token, rank in tok.mergeable_ranks.items()}
    vocab.update(tok.special_tokens)
    return vocab


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Byte-pair-encode `token` using only merges ranked below max_rank (tiktoken's algorithm)."""
    parts = [bytes([b]) for b in token]
    while True:
        best: tuple[int, int] | None = None  # (position, rank) of the lowest-ranked adjacent pair
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[1]):
                best = (i, r)
        if best is None:
            return parts
        i = best[0]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def gpt2_merges(tok: Any) -> list[tuple[bytes, bytes]]:
    """The merge list in rank order: each multi-byte token is the merge of the two parts that BPE
    with only the lower-ranked merges leaves it in (how transformers converts tiktoken vocabularies)."""
    ranks = tok.mergeable_ranks
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise TokenizerError(f"token {token!r} is not the merge of two lower-ranked tokens; "
                                 "this vocabulary cannot be written as merges.txt")
        merges.append((parts[0], parts[1]))
    return merges


def gpt2_tokenizer_files(tok: Any, model_max_length: int) -> dict[str, str]:
    """File name -> text of the Hugging Face GPT-2 tokenizer files for tiktoken's gpt2 encoding."""
    assert is_gpt2_tokenizer(tok)
    b2u = bytes_to_unicode()
    merges = ["#version: 0.2"] + [" ".join("".join(b2u[b] for b in part) for part in pair)
                                  for pair in gpt2_merges(tok)]
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length,
              "add_prefix_space": False, "errors": "replace", **special}
    return {
        "vocab.json": json.dumps(gpt2_vocab(tok), ensure_ascii=False),
        "merges.txt": "\n".join(merges) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }


__all__ = [
    "check_representable", "hf_config_from", "config_from_hf", "gpt2_shapes", "hf_shapes", "to_hf_state_dict",
    "from_hf_state_dict", "is_gpt2_tokenizer", "gpt2_vocab", "gpt2_merges", "gpt2_tokenizer_files",
]
