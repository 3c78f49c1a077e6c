"""Config resolution: defaults < preset < TOML file < flags, validation, durations."""

from __future__ import annotations

import pytest

from gptkit.config import PRESETS, parse_duration, resolve_config
from gptkit.errors import UsageError


def test_precedence_defaults_preset_file_flags(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "baby"\n[model]\nn_layer = 3\n[train]\nmax_iters = 77\nlearning_rate = 5e-4\n')
    mc, tc = resolve_config(None, f, {"max_iters": 10})
    assert (mc.n_embd, mc.block_size) == (384, 256)  # from the baby preset named in the file
    assert mc.n_layer == 3  # file beats preset
    assert tc.learning_rate == 5e-4
    assert tc.max_iters == 10  # flag beats file
    assert tc.beta1 == 0.9  # untouched default


def test_presets_have_their_documented_shapes():
    mc, _ = resolve_config("baby")
    assert (mc.n_layer, mc.n_head, mc.n_embd, mc.block_size) == (6, 6, 384, 256)
    mc, tc = resolve_config("gpt2")
    assert (mc.n_layer, mc.n_head, mc.n_embd, mc.block_size, tc.tokenizer) == (12, 12, 768, 1024, "gpt2")
    assert set(PRESETS) >= {"tiny", "small", "baby", "gpt2"}


def test_vocab_size_is_the_bpe_target_not_the_model_shape():
    mc, tc = resolve_config(None, None, {"vocab_size": 2048, "tokenizer": "bpe"})
    assert tc.vocab_size == 2048 and mc.vocab_size == 0


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2.5m", 150), ("45", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "10x", "-5s", "0", "m", "nan"])
def test_bad_durations(text):
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("overrides,needle", [
    ({"n_embd": 100, "n_head": 3}, "multiple"),
    ({"n_layer": 0}, "--n-layer"),
    ({"dropout": 1.5}, "--dropout"),
    ({"learning_rate": float("nan")}, "finite"),
    ({"val_fraction": 0.0}, "--val-fraction"),
    ({"vocab_size": 100}, "256"),
    ({"norm": "batchnorm"}, "--norm"),
    ({"max_iters": -1}, "--max-iters"),
])
def test_validation_names_the_flag(overrides, needle):
    with pytest.raises(UsageError, match=needle):
        resolve_config(None, None, overrides)


def test_unknown_preset_and_unknown_file_key(tmp_path):
    with pytest.raises(UsageError, match="unknown preset"):
        resolve_config("huge")
    f = tmp_path / "bad.toml"
    f.write_text("n_layers = 3\n")
    with pytest.raises(UsageError, match="n_layers"):
        resolve_config(None, f)
    f.write_text("n_layer = [\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        resolve_config(None, f)


def test_default_preset_follows_the_device(tmp_path):
    assert resolve_config(None, None, {}, device_type="cuda")[0].n_embd == 384  # baby on a GPU
    assert resolve_config(None, None, {}, device_type="cpu") == resolve_config("quick")  # tuned for CPU minutes
    mc, tc = resolve_config("quick")
    assert (mc.pos_encoding, tc.optimizer) == ("rope", "muon")
    mc, tc = resolve_config("tiny")  # nanoGPT's CPU recipe, GPT-2's architecture, AdamW
    assert (mc.pos_encoding, mc.norm, mc.mlp, tc.optimizer, tc.tokens_per_step) == ("learned", "layernorm", "gelu",
                                                                                    "adamw", 12 * 64)
    f = tmp_path / "run.toml"
    f.write_text('preset = "small"\n')
    assert resolve_config(None, f, {}, device_type="cuda")[0].n_embd == 192  # a named preset wins
