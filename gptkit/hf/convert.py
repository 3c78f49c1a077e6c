"""`gptkit convert`: a Hugging Face GPT-2 folder <-> a gptkit checkpoint, the direction read from SRC.

Owns reading and writing the two on-disk forms and choosing the direction: a folder with
`config.json` is Hugging Face's (`save_pretrained` layout: `model.safetensors`, or shards listed in
`model.safetensors.index.json`); a `.safetensors` file, a run folder or a run name is gptkit's.
Only safetensors and JSON are read: a folder holding just `pytorch_model.bin` (a pickle, which can
run code when loaded) is refused, never opened. transformers is not needed or imported.

The name and config mapping lives in `gpt2.py`; this module only moves tensors between files.
HF -> gptkit writes `DST/last.safetensors` (or DST itself when it ends in `.safetensors`) with the
`gpt2` tiktoken tokenizer — or the gptkit tokenizer a previous export left as `gptkit_tokenizer.json`.
gptkit -> HF writes `config.json`, `model.safetensors`, `generation_config.json` and either GPT-2's
tokenizer files (for the gpt2 encoding) or `gptkit_tokenizer.json` (char, byte, bpe, others).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptkit import __version__, checkpoint
from gptkit.config import ModelConfig, to_dict
from gptkit.errors import CheckpointError, InputError, UsageError
from gptkit.fsio import atomic_write, atomic_write_bytes, clean_stale_temps
from gptkit.hf import gpt2
from gptkit.tokenizers.core import Tokenizer

DTYPES = ("float32", "bfloat16", "float16")
HF_WEIGHTS, HF_INDEX, HF_CONFIG = "model.safetensors", "model.safetensors.index.json", "config.json"
GENERATION_CONFIG = "generation_config.json"
GPTKIT_TOKENIZER = "gptkit_tokenizer.json"  # a gptkit tokenizer written beside an exported model
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
HF_TO_GPTKIT, GPTKIT_TO_HF = "hf-to-gptkit", "gptkit-to-hf"
# Every file an export may write: with --overwrite the ones not written this time are removed, so a
# stale tokenizer from an earlier export never sits beside a new model.
HF_OUTPUTS = (HF_WEIGHTS, HF_INDEX, HF_CONFIG, GENERATION_CONFIG, GPTKIT_TOKENIZER, "vocab.json", "merges.txt",
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class ConvertResult:
    """What `convert` wrote: the checkpoint file (HF -> gptkit) or the folder (gptkit -> HF)."""

    direction: str
    src: Path
    dst: Path
    config: ModelConfig
    dtype: str
    tokenizer: str
    params: int
    files: list[str] = field(default_factory=list)


def detect(src: str | Path, store: Path | None = None) -> tuple[str, Path]:
    """(direction, path): a Hugging Face folder, or the gptkit checkpoint file SRC names."""
    p = Path(src)
    if p.is_dir():
        if (p / HF_CONFIG).is_file():
            return HF_TO_GPTKIT, p
        if (p / checkpoint.LAST).is_file() or (p / checkpoint.BEST).is_file():
            return GPTKIT_TO_HF, checkpoint.resolve(p, store)
        _refuse_pickles(p)
        raise InputError(f"{str(p)!r} has no {HF_CONFIG}: it is neither a Hugging Face model folder "
                         "(config.json + model.safetensors) nor a gptkit run folder")
    if p.is_file() and p.name in (HF_CONFIG, HF_WEIGHTS) and (p.parent / HF_CONFIG).is_file():
        return HF_TO_GPTKIT, p.parent  # a file inside a Hugging Face folder means the folder
    return GPTKIT_TO_HF, checkpoint.resolve(src, store)


def _refuse_pickles(folder: Path) -> None:
    found = [name for name in PICKLES if (folder / name).is_file()]
    if found:
        raise InputError(f"{str(folder)!r} holds only {found[0]}, a pickle, which can run code when loaded; "
                         "gptkit never unpickles — re-save it as safetensors with save_pretrained() and convert that")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read {str(path)!r}: {e.strerror}") from None
    except ValueError as e:
        raise InputError(f"{str(path)!r} is not valid JSON ({str(e).splitlines()[0]})") from None


def _weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards its index names (plain file names inside the folder only)."""
    if (folder / HF_WEIGHTS).is_file():
        return [folder / HF_WEIGHTS]
    if (folder / HF_INDEX).is_file():
        index = _read_json(folder / HF_INDEX)
        names = sorted(set(index.get("weight_map", {}).values())) if isinstance(index, dict) else []
        if not names or any(not isinstance(n, str) or Path(n).name != n for n in names):
            raise InputError(f"{str(folder / HF_INDEX)!r} has no usable weight_map of shard file names")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise InputError(f"{str(folder)!r} lacks shard {missing[0]} listed in {HF_INDEX}")
        return [folder / n for n in names]
    _refuse_pickles(folder)
    raise InputError(f"{str(folder)!r} has {HF_CONFIG} but no {HF_WEIGHTS}; save the model with save_pretrained()")


def read_hf_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json as a dict, every tensor by its Hugging Face name) — safetensors and JSON only."""
    from safetensors import SafetensorError, safe_open

    config = _read_json(folder / HF_CONFIG)
    tensors: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"cannot read {str(path)!r} as safetensors ({detail})") from None
    return config, tensors


def _cast(tensors: dict[str, torch.Tensor], dtype: str | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return tensors
    return {k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}


def _dtype_name(tensors: dict[str, torch.Tensor]) -> str:
    return str(next(iter(tensors.values())).dtype).replace("torch.", "")


def _hf_vocab(folder: Path) -> dict[str, int] | None:
    """The vocabulary a Hugging Face folder ships (vocab.json or tokenizer.json), None if none."""
    if (folder / "vocab.json").is_file():
        return _read_json(folder / "vocab.json")
    if (folder / "tokenizer.json").is_file():
        model = _read_json(folder / "tokenizer.json").get("model", {})
        return model.get("vocab") if isinstance(model, dict) else None
    return None


def _tokenizer_for(folder: Path, cfg: ModelConfig) -> Tokenizer:
    """The tokenizer a converted model gets: a gptkit export's own, else tiktoken's gpt2 — after
    checking that any vocabulary shipped in the folder is GPT-2's."""
    from gptkit.tokenizers import build_tokenizer
    from gptkit.tokenizers.stored import load_tokenizer

    if (folder / GPTKIT_TOKENIZER).is_file():
        tok = load_tokenizer(folder / GPTKIT_TOKENIZER)
    else:
        tok = build_tokenizer("gpt2")
        vocab = _hf_vocab(folder)
        if vocab is not None and vocab != gpt2.gpt2_vocab(tok):
            raise InputError(f"the tokenizer in {str(folder)!r} is not GPT-2's; gptkit can pair converted "
                             "weights only with the gpt2 tokenizer (or a gptkit_tokenizer.json)")
    if tok.vocab_size > cfg.vocab_size:
        raise InputError(f"config.json has vocab_size={cfg.vocab_size}, fewer than the {tok.vocab_size} ids "
                         f"of the {tok.name} tokenizer")
    return tok


def _gptkit_module(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A GPT holding exactly `tensors` (no copy, no random init: it is built on the meta device)."""
    from gptkit.model import GPT

    with torch.device("meta"):
        model = GPT(cfg)
    result = model.load_state_dict(tensors, strict=False, assign=True)
    assert not result.unexpected_keys and result.missing_keys == ["lm_head.weight"], result
    model.lm_head.weight = model.transformer.wte.weight  # re-tie to the loaded embedding
    return model


def _checkpoint_path(dst: Path, overwrite: bool) -> tuple[Path, list[Path]]:
    """(file to write, files to remove after): in a folder an older best.safetensors would shadow
    the new last.safetensors for `gptkit sample`, so --overwrite removes it."""
    if dst.suffix == ".safetensors":
        path, stale = dst, []
    elif dst.is_file():
        raise UsageError(f"DST {str(dst)!r} is a file; give a folder or a .safetensors path")
    else:
        path, stale = dst / checkpoint.LAST, [dst / checkpoint.BEST]
    taken = [p for p in (path, *stale) if p.exists()]
    if taken and not overwrite:
        raise UsageError(f"{str(taken[0])!r} already exists; pass --overwrite to replace it or choose another DST")
    return path, stale


def hf_to_gptkit(folder: Path, dst: Path, dtype: str | None = None, overwrite: bool = False) -> ConvertResult:
    """Hugging Face GPT-2 folder -> a gptkit checkpoint that sample, inspect and train --init-from read."""
    hf_config, hf_tensors = read_hf_folder(folder)
    cfg = gpt2.config_from_hf(hf_config)
    tensors = _cast(gpt2.from_hf_state_dict(hf_tensors, cfg), dtype)
    tok = _tokenizer_for(folder, cfg)
    path, stale = _checkpoint_path(dst, overwrite)
    source = {"format": "huggingface", "model_type": "gpt2", "path": str(folder.resolve()),
              "transformers_version": hf_config.get("transformers_version")}
    metadata = {
        # no train_config and step 0: no training happened here; the state says where the weights came from
        "run": path.parent.name, "model_config": to_dict(cfg), "tokenizer": tok.to_dict(),
        "state": {"step": 0, "tokens_seen": 0, "converted_from": source,
                  "versions": {"gptkit": __version__, "torch": torch.__version__}},
    }
    checkpoint.save(path, _gptkit_module(cfg, tensors), metadata)
    for p in stale:
        p.unlink(missing_ok=True)
    params = sum(t.numel() for t in tensors.values())
    return ConvertResult(HF_TO_GPTKIT, folder, path, cfg, _dtype_name(tensors), tok.name, params, [path.name])


def _prepare_folder(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"DST {str(dst)!r} is a file; give a folder for the Hugging Face model")
    existing = [n for n in HF_OUTPUTS if (dst / n).exists()]
    if existing and not overwrite:
        raise UsageError(f"{str(dst)!r} already holds {existing[0]}; pass --overwrite to replace the model "
                         "or choose another DST")
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create folder {str(dst)!r} ({e.strerror}); choose another DST") from None
    clean_stale_temps(dst)


def _write_hf_files(dst: Path, tensors: dict[str, torch.Tensor], texts: dict[str, str]) -> list[str]:
    """Write the weights and the JSON/text files atomically; remove stale files of an older export."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        # transformers refuses safetensors files without this format tag
        atomic_write(dst / HF_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        for name, text in texts.items():
            atomic_write_bytes(dst / name, text.encode("utf-8"))
        for name in HF_OUTPUTS:
            if name != HF_WEIGHTS and name not in texts:
                (dst / name).unlink(missing_ok=True)
    except (OSError, SafetensorError) as e:  # safetensors reports a failed write (a full disk) as its own error
        raise CheckpointError(f"cannot write into {str(dst)!r} ({getattr(e, 'strerror', None) or e}); free space or "
                              "choose another DST") from None
    return [HF_WEIGHTS, *texts]


def gptkit_to_hf(ckpt: Path, dst: Path, dtype: str | None = None, overwrite: bool = False) -> ConvertResult:
    """A gptkit checkpoint -> a folder `AutoModelForCausalLM.from_pretrained` loads without warnings."""
    from gptkit.tokenizers.stored import tokenizer_from_dict

    info = checkpoint.read_info(ckpt)
    cfg = info.model_config
    gpt2.check_representable(cfg)
    tok = tokenizer_from_dict(info.meta["tokenizer"])
    tensors = _cast(gpt2.to_hf_state_dict(checkpoint.load_tensors(info, "model."), cfg), dtype)
    dtype_name = _dtype_name(tensors)
    _prepare_folder(dst, overwrite)
    config = gpt2.hf_config_from(cfg, tok.eot_id, dtype_name)
    texts = {HF_CONFIG: json.dumps(config, indent=2) + "\n",
             GENERATION_CONFIG: json.dumps({"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id}, indent=2) + "\n"}
    if gpt2.is_gpt2_tokenizer(tok):
        texts.update(gpt2.gpt2_tokenizer_files(tok, cfg.block_size))
    else:  # no Hugging Face twin: ship gptkit's own description (README: how to use it)
        texts[GPTKIT_TOKENIZER] = json.dumps(tok.to_dict(), separators=(",", ":"))
    files = _write_hf_files(dst, tensors, texts)
    params = sum(t.numel() for t in tensors.values())
    return ConvertResult(GPTKIT_TO_HF, ckpt, dst, cfg, dtype_name, tok.name, params, files)


def convert(src: str | Path, dst: str | Path, dtype: str | None = None, overwrite: bool = False,
            store: Path | None = None) -> ConvertResult:
    """Convert SRC to DST in the direction SRC implies; `dtype` None keeps the source's precision."""
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    direction, path = detect(src, store)
    dst = Path(dst)
    src_dir = path if path.is_dir() else path.parent
    if dst.resolve() in (src_dir.resolve(), path.resolve()):
        raise UsageError("DST must be a different place from SRC")
    if direction == HF_TO_GPTKIT:
        return hf_to_gptkit(path, dst, dtype, overwrite)
    return gptkit_to_hf(path, dst, dtype, overwrite)


__all__ = ["convert", "detect", "hf_to_gptkit", "gptkit_to_hf", "read_hf_folder", "ConvertResult", "DTYPES"]
