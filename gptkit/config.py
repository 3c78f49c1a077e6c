"""Configuration as data: the model, training and sampling dataclasses, presets, TOML files.

Owns the one vocabulary shared by CLI flags (`--n-layer` is `n_layer`), TOML config files and
checkpoint metadata, and the precedence rule defaults < preset < `--config` file < flags.
Standard library only: importing this module must stay cheap (`gptkit --help` imports it).
It does not pick devices or touch torch; `runtime.py` turns "auto" values into real choices.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gptkit.errors import UsageError


def _f(default: Any, help: str) -> Any:
    """A config field with its one-line doc, which is also the CLI flag's help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    """Shape of the decoder-only transformer. Defaults are GPT-2's architecture at a tiny size."""

    n_layer: int = _f(4, "number of transformer blocks")
    n_head: int = _f(4, "attention heads per block (n_embd must divide evenly)")
    n_embd: int = _f(128, "width of the residual stream (embedding dimension)")
    block_size: int = _f(64, "context length: the most tokens the model attends over")
    vocab_size: int = _f(0, "number of token ids, set from the tokenizer (not a flag)")
    dropout: float = _f(0.0, "dropout on residual branches and embeddings (0 keeps CPU SDPA on its fast kernel)")
    bias: bool = _f(True, "biases in Linear layers and LayerNorms, as in GPT-2")
    pos_encoding: str = _f("learned", "'learned' absolute positions (GPT-2) or 'rope' (rotary)")
    norm: str = _f("layernorm", "'layernorm' (GPT-2) or 'rmsnorm'")
    mlp: str = _f("gelu", "feed-forward: 'gelu' (GPT-2, 4x width) or 'swiglu' (gated, ~8/3x width)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def mlp_hidden(cfg: ModelConfig) -> int:
    """The FFN's hidden width: GPT-2's 4C; SwiGLU's three matrices take ~8/3 C (a multiple of 8),
    the same parameters as two 4C ones."""
    return 8 * ((8 * cfg.n_embd // 3 + 7) // 8) if cfg.mlp == "swiglu" else 4 * cfg.n_embd


def padded_vocab(vocab_size: int) -> int:
    """Rows of the model's embedding and output matrices: the vocabulary rounded up to a multiple of
    64, so the logits GEMM keeps tensor-core-aligned strides (nanoGPT's 50304 for GPT-2's 50257). The
    extra rows are zero; the model's logits and state dict show the real vocabulary only."""
    return -(-vocab_size // 64) * 64


def approx_params(cfg: ModelConfig) -> int:
    """Parameters of a GPT with this config, from the shapes alone (biases and norms ignored)."""
    C = cfg.n_embd
    matrices = 3 if cfg.mlp == "swiglu" else 2
    per_layer = 4 * C * C + matrices * C * mlp_hidden(cfg)  # attention + MLP matrices
    return cfg.n_layer * per_layer + cfg.vocab_size * C + (cfg.block_size * C if cfg.pos_encoding == "learned" else 0)


@dataclass
class TrainConfig:
    """How to train: data, tokenizer, optimisation, schedule, evaluation and stopping."""

    tokenizer: str = _f("char", "char | byte | bpe | a tiktoken encoding name (gpt2, cl100k_base, ...)")
    vocab_size: int | None = _f(None, "target vocabulary for `bpe` (default 1024)")
    val_fraction: float = _f(0.1, "the last fraction of the text held out for validation")
    batch_size: int | None = _f(None, "sequences per micro-batch (default: as many as the device holds well; the "
                                      "tokens per step stay)")
    grad_accum: int | None = _f(None, "micro-batches per optimizer step in each process (default: as many as the "
                                      "tokens per step need; same gradient as one bigger batch)")
    tokens_per_step: int | None = _f(None, "tokens per optimizer step over all processes; micro-batches are "
                                           "split to reach it (presets set it)")
    max_iters: int = _f(2000, "optimizer steps to run")
    max_time: float | None = _f(None, "wall-clock budget in seconds (flag accepts 90s, 10m, 1h30m; unset: none)")
    learning_rate: float = _f(1e-3, "peak learning rate after warmup")
    min_lr: float = _f(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = _f(100, "linear warmup steps")
    weight_decay: float = _f(0.1, "AdamW decay on matrices (not on biases, norms)")
    optimizer: str = _f("adamw", "'adamw', or 'muon': orthogonalised momentum for the blocks' matrices, "
                                 "AdamW for embeddings, biases and norms")
    muon_lr: float = _f(0.02, "peak learning rate of Muon's matrices (same warmup and decay)")
    beta1: float = _f(0.9, "AdamW first-moment decay")
    beta2: float = _f(0.99, "AdamW second-moment decay")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    eval_interval: int = _f(250, "steps between validation evaluations and checkpoints")
    eval_iters: int = _f(50, "batches averaged per validation estimate")
    log_interval: int | None = _f(None, "steps between reads of the loss and gradient norm from the device, each "
                                        "a wait for it (default: 1 on CPU, where nothing runs ahead; else 10)")
    seed: int = _f(1337, "seed for weights, batch order and dropout")
    device: str = _f("auto", "auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps")
    dtype: str = _f("auto", "auto | float32 | bfloat16 | float16 (autocast; master weights stay fp32)")
    compile: bool | None = _f(None, "torch.compile the model (default: on for CUDA, off on CPU where it rarely pays)")
    sample_every: int = _f(0, "print a short sample from the model at every Nth step's evaluation (0 = never)")


@dataclass
class SampleConfig:
    """How to sample from a trained model."""

    max_new_tokens: int = _f(500, "tokens to generate after the prompt")
    temperature: float = _f(0.8, "softmax temperature; 0 = greedy")
    top_k: int | None = _f(200, "keep only the k most likely tokens (None = off)")
    seed: int | None = _f(None, "seed for reproducible sampling (None = random)")


# Presets set model shape and the training settings that go with it. Values not named keep the
# dataclass defaults. Each states its tokens per optimizer step, however many processes share it and
# however the micro-batches are cut to fit the device (`train.batch_plan`). `tiny` is nanoGPT's CPU
# recipe; `baby` is nanoGPT's shakespeare-char model; `gpt2` nanoGPT's GPT-2 124M (12 x 40 x 1024).
# `quick` is tiny's shape tuned for the best validation loss in a few CPU minutes (benchmarks/train.py):
# rotary positions, Muon, a larger batch that pays for Muon's per-step cost, and a higher LR.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, pos_encoding="rope"),
        "train": dict(tokens_per_step=32 * 64, optimizer="muon", learning_rate=3e-3, min_lr=3e-4, muon_lr=0.02,
                      max_iters=1000, warmup_iters=50, eval_interval=200, eval_iters=20),
    },
    "tiny": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
        "train": dict(tokens_per_step=12 * 64, learning_rate=1e-3, max_iters=2000, warmup_iters=100),
    },
    "small": {
        "model": dict(n_layer=6, n_head=6, n_embd=192, block_size=128),
        "train": dict(tokens_per_step=32 * 128, learning_rate=1e-3, max_iters=3000, warmup_iters=100),
    },
    "baby": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        "train": dict(tokens_per_step=64 * 256, learning_rate=1e-3, max_iters=5000, warmup_iters=100),
    },
    "gpt2": {
        "model": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
        "train": dict(
            tokenizer="gpt2", tokens_per_step=12 * 40 * 1024, learning_rate=6e-4, min_lr=6e-5,
            max_iters=600000, warmup_iters=2000, weight_decay=0.1, beta2=0.95,
        ),
    },
}
DEFAULT_PRESET = "quick"
# With no --preset, the size follows the device: a CPU gets the small fast model, a GPU nanoGPT's
# 10M shakespeare-char model. A preset named on the command line or in a config file always wins.
DEVICE_PRESETS = {"cpu": "quick", "mps": "small", "cuda": "baby"}

CHOICES = {  # the settings with a closed set of values (the CLI makes them Literal choices)
    "pos_encoding": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "swiglu"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "optimizer": ("adamw", "muon"),
}


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def parse_duration(text: str | float | int) -> float:
    """'90s', '10m', '1h30m', '2.5m' or a plain number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s)
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|m|s)", s)
            if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(h|m|s)", "", s).strip():
                raise UsageError(f"--max-time: bad duration {text!r}; use a form like 90s, 10m or 1h30m")
            unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
            seconds = sum(float(n) * unit[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"--max-time: bad duration {text!r}; it must be a positive time such as 90s or 10m")
    return seconds


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file: top-level keys and/or [model] / [train] tables; returns a flat dict."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} not found: pass an existing .toml file to --config")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _check_known(keys: dict[str, Any], where: str) -> None:
    known = set(field_names(ModelConfig)) | set(field_names(TrainConfig)) | {"preset"}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise UsageError(f"unknown setting {unknown[0]!r} in {where}; see `gptkit train --help` for names")


def _apply(model: dict[str, Any], train: dict[str, Any], values: dict[str, Any]) -> None:
    mnames, tnames = set(field_names(ModelConfig)), set(field_names(TrainConfig))
    for key, value in values.items():
        if value is None or key == "preset":
            continue
        if key == "vocab_size":  # a user's vocab_size is the bpe target; the model's comes from the tokenizer
            train[key] = value
        elif key in mnames:
            model[key] = value
        elif key in tnames:
            train[key] = value


def chosen_preset(preset: str | None, file_values: dict[str, Any], overrides: dict[str, Any],
                  device_type: str = "cpu") -> str:
    """The preset a run starts from: named by a flag, else by the config file, else the device's."""
    name = (overrides.get("preset") or preset or file_values.get("preset")
            or DEVICE_PRESETS.get(device_type, DEFAULT_PRESET))
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return name


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    device_type: str = "cpu",
) -> tuple[ModelConfig, TrainConfig]:
    """Merge defaults < preset < config file < overrides (None values are ignored), then validate.
    Without a preset anywhere, the device's default preset applies (DEVICE_PRESETS)."""
    file_values = load_toml(config_file) if config_file else {}
    _check_known(file_values, f"config file {str(config_file)!r}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_known(overrides, "overrides")
    name = chosen_preset(preset, file_values, overrides, device_type)
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    _apply(model, train, PRESETS[name]["model"])
    _apply(model, train, PRESETS[name]["train"])
    mine = {k for k, v in {**file_values, **overrides}.items() if v is not None}
    if {"batch_size", "grad_accum"} <= mine and "tokens_per_step" not in mine:
        train.pop("tokens_per_step", None)  # both given: they define the step, not the preset's tokens per step
    _apply(model, train, file_values)
    _apply(model, train, overrides)
    if "max_time" in train and train["max_time"] is not None:
        train["max_time"] = parse_duration(train["max_time"])
    mc = _build(ModelConfig, model)
    tc = _build(TrainConfig, train)
    validate(mc, tc)
    return mc, tc


def _build(cls: type, values: dict[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        kwargs[f.name] = _coerce(f, values[f.name])
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Check a value from a TOML file or flag against the field's declared type."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    flag = "--" + f.name.replace("_", "-")
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{flag} must be a whole number, got {value!r}")
    elif kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{flag} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value!r}")
    elif kind.startswith("bool"):
        if not isinstance(value, bool):
            raise UsageError(f"{flag} must be true or false, got {value!r}")
    elif kind == "str":
        value = str(value)
    return value


def validate(mc: ModelConfig, tc: TrainConfig) -> None:
    """Reject values that cannot work, with one line naming the flag."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UsageError(msg)

    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        need(getattr(mc, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(mc, name)}")
    need(mc.vocab_size >= 0, f"--vocab-size must be positive, got {mc.vocab_size}")
    need(mc.n_embd % mc.n_head == 0, f"--n-embd ({mc.n_embd}) must be a multiple of --n-head ({mc.n_head})")
    need(mc.pos_encoding != "rope" or mc.head_dim % 2 == 0, "rope needs an even head size (n_embd / n_head)")
    need(0.0 <= mc.dropout < 1.0, f"--dropout must be in [0, 1), got {mc.dropout}")
    need(tc.tokens_per_step is None or tc.tokens_per_step > 0, f"--tokens-per-step must be positive, got {tc.tokens_per_step}")
    need(tc.sample_every >= 0, f"--sample-every must be 0 (off) or more, got {tc.sample_every}")
    for name in ("batch_size", "grad_accum", "max_iters", "eval_interval", "eval_iters", "log_interval"):
        v = getattr(tc, name)
        need(v is None or v > 0, f"--{name.replace('_', '-')} must be positive, got {v}")
    need(tc.warmup_iters >= 0, f"--warmup-iters must be 0 or more, got {tc.warmup_iters}")
    need(0.0 < tc.val_fraction < 1.0, f"--val-fraction must be between 0 and 1, got {tc.val_fraction}")
    need(tc.learning_rate > 0, f"--learning-rate must be positive, got {tc.learning_rate}")
    need(tc.muon_lr > 0, f"--muon-lr must be positive, got {tc.muon_lr}")
    need(0 <= tc.min_lr <= tc.learning_rate, f"--min-lr must be in [0, learning rate], got {tc.min_lr}")
    need(tc.weight_decay >= 0, f"--weight-decay must be 0 or more, got {tc.weight_decay}")
    need(0 <= tc.beta1 < 1 and 0 <= tc.beta2 < 1, "--beta1 and --beta2 must be in [0, 1)")
    need(tc.grad_clip >= 0, f"--grad-clip must be 0 (off) or more, got {tc.grad_clip}")
    check_bpe_vocab(tc.vocab_size)
    check_seed(tc.seed)
    for obj in (mc, tc):
        for name, choices in CHOICES.items():
            if hasattr(obj, name):
                v = getattr(obj, name)
                need(v in choices, f"--{name.replace('_', '-')} must be one of {', '.join(choices)}; got {v!r}")


def check_bpe_vocab(vocab_size: int | None) -> None:
    """A bpe target rustbpe can train: the 256 byte tokens at least, and a 32-bit count."""
    if vocab_size is not None and not 256 <= vocab_size < 2**32:
        raise UsageError(f"--vocab-size must be from 256 (the 256 byte tokens) to 2**32-1, got {vocab_size}")


def check_seed(seed: int | None) -> None:
    """A seed every generator we use accepts (numpy wants >= 0, torch < 2**64)."""
    if seed is not None and not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be a whole number from 0 to 2**63-1, got {seed}")


def differences(mc: ModelConfig, tc: TrainConfig, preset: str) -> dict[str, Any]:
    """The settings of (mc, tc) that differ from what `preset` alone gives (the model's vocab_size,
    set from the tokenizer, aside)."""
    base_mc, base_tc = resolve_config(preset)
    out = {}
    for obj, base in ((mc, base_mc), (tc, base_tc)):
        for f in fields(obj):
            if obj is mc and f.name == "vocab_size":
                continue
            if getattr(obj, f.name) != getattr(base, f.name):
                out[f.name] = getattr(obj, f.name)
    return out


def to_toml(mc: ModelConfig, tc: TrainConfig, preset: str) -> str:
    """The settings as a config file that `--config` reads back to the same values: the preset, then a
    [model] and a [train] table. A setting left unset (None) is a comment saying so."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
        return repr(v)

    lines = [f"preset = {value(preset)}"]
    for table, obj in (("model", mc), ("train", tc)):
        lines += ["", f"[{table}]"]
        for f in fields(obj):
            v = getattr(obj, f.name)
            if obj is mc and f.name == "vocab_size":
                lines.append("# vocab_size is set from the tokenizer (see [train] tokenizer and vocab_size)")
            elif v is None:
                lines.append(f"# {f.name} (unset): {f.metadata.get('help', '')}")
            else:
                lines.append(f"{f.name} = {value(v)}")
    return "\n".join(lines) + "\n"


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config from checkpoint metadata; keys from newer versions are ignored."""
    names = set(field_names(cls))
    return cls(**{k: v for k, v in data.items() if k in names})


__all__ = [
    "ModelConfig", "TrainConfig", "SampleConfig", "PRESETS", "DEFAULT_PRESET", "mlp_hidden", "approx_params",
    "parse_duration", "load_toml", "chosen_preset", "resolve_config", "differences", "to_toml", "validate",
    "check_seed", "to_dict", "from_dict",
]
