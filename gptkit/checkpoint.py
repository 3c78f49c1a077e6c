"""The checkpoint store: safetensors files under `checkpoints/<run>/`, written atomically.

A checkpoint holds `model.*` tensors (from the unwrapped, uncompiled module; the tied `lm_head`
is not stored twice), `optim.*` tensors keyed by parameter name, and JSON metadata: format
version, model and train config, the complete tokenizer, step, losses, RNG and data position.
One file is enough to sample, inspect or resume, offline. Never pickle: a checkpoint cannot run code.

Writes go to a temporary file in the same folder, are flushed and fsynced, then `os.replace`d
over the old file: a crash never leaves a half-written file where a good one stood.
It does not decide *when* to save (train.py does) or build optimizers.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.config import ModelConfig, from_dict
from gptkit.errors import CheckpointError, GptkitError, TokenizerError
from gptkit.fsio import atomic_write, clean_stale_temps

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "gptkit"
FORMAT_VERSION = 1
LAST, BEST = "last.safetensors", "best.safetensors"
MAX_HEADER_BYTES = 64 * 1024 * 1024  # a real header is well under this; refuse before reading more
REQUIRED_META = ("format", "format_version", "model_config", "tokenizer")
JSON_META = ("model_config", "train_config", "tokenizer", "state")


def default_store() -> Path:
    """GPTKIT_STORE, else the previous release's GPTKIT_CHECKPOINTS, else ./checkpoints."""
    return Path(os.environ.get("GPTKIT_STORE") or os.environ.get("GPTKIT_CHECKPOINTS") or "checkpoints")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP (`.module`) and torch.compile (`._orig_mod`)."""
    import torch  # here, not at import: reading a header (`gptkit runs`, read_info) needs no torch

    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = unwrap(model).state_dict()
    return {f"model.{k}": v.detach().contiguous() for k, v in sd.items() if k != "lm_head.weight"}


def optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW moments keyed by parameter *name*, so a resumed run never depends on parameter order."""
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    rows = {k: v.shape[0] for k, v in unwrap(model).state_dict().items() if v.dim()}  # without the vocabulary's padding
    import torch

    out: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    value = value[:rows[name]] if value.dim() and name in rows else value
                    out[f"optim.{name}.{key}"] = value.detach().contiguous()
    return out


def save(path: Path, model: torch.nn.Module, metadata: dict[str, Any],
         optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a checkpoint atomically. metadata values that are not strings are stored as JSON."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint folder {str(path.parent)!r}: {e.strerror}") from None
    tensors = model_tensors(model)
    if optimizer is not None:
        tensors.update(optimizer_tensors(model, optimizer))
    tensors = {k: (v.cpu() if v.device.type != "cpu" else v) for k, v in tensors.items()}
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    for k, v in metadata.items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    try:
        clean_stale_temps(path.parent)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    except (OSError, SafetensorError) as e:  # safetensors reports a failed write (a full disk) as its own error
        raise CheckpointError(f"cannot write checkpoint {str(path)!r} ({getattr(e, 'strerror', None) or e}); "
                              "the previous checkpoint is unchanged — free space or choose --store DIR") from None
    return path


def _one_line(e: BaseException) -> str:
    """A library's message as one line (safetensors' quote the bad bytes, newlines included)."""
    return " ".join(str(e).split())


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header ourselves first: size-checked, so a hostile file cannot make us
    allocate gigabytes, and every kind of damage becomes one CheckpointError."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{str(path)!r} is not a safetensors checkpoint (file too short)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n + 8 > size:
                raise CheckpointError(f"{str(path)!r} is not a valid safetensors checkpoint "
                                      "(bad header length: truncated, corrupted, or another format such as pickle)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{str(path)!r} has a corrupted safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{str(path)!r} has a corrupted safetensors header")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            ok = 0 <= start <= end <= data_len
            shaped = all(type(d) is int and d >= 0 for d in info["shape"])
        except (TypeError, KeyError, ValueError):
            ok = shaped = False
        if not ok:
            raise CheckpointError(f"{str(path)!r} is truncated or corrupted (tensor {name!r} lies beyond the file's end)")
        if not shaped:
            raise CheckpointError(f"{str(path)!r} has a corrupted safetensors header (tensor {name!r} has no valid shape)")
    return header


@dataclass
class CheckpointInfo:
    """What a checkpoint's header says, without reading any tensor data."""

    path: Path
    meta: dict[str, Any]  # parsed: model_config, train_config, tokenizer, state are dicts
    tensors: dict[str, dict[str, Any]]  # name -> {"dtype", "shape", "data_offsets"}

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.meta["model_config"])

    @property
    def state(self) -> dict[str, Any]:
        return self.meta.get("state", {})


def read_info(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    header = _read_header(path)
    raw = header.pop("__metadata__", None) or {}
    if raw.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not a gptkit checkpoint (no gptkit metadata)")
    missing = [k for k in REQUIRED_META if k not in raw]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks metadata {', '.join(missing)}; it was not written by gptkit or is damaged")
    try:
        version = int(raw["format_version"])
    except ValueError:
        raise CheckpointError(f"{str(path)!r} has a bad format_version {raw['format_version']!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} uses checkpoint format {version}, newer than this gptkit reads "
                              f"({FORMAT_VERSION}); upgrade gptkit")
    meta: dict[str, Any] = dict(raw)
    for key in JSON_META:
        if key in raw:
            try:
                meta[key] = json.loads(raw[key])
            except json.JSONDecodeError:
                meta[key] = None
            if not isinstance(meta[key], dict):
                raise CheckpointError(f"{str(path)!r} has corrupted {key} metadata") from None
    meta["format_version"] = version
    return CheckpointInfo(path, meta, header)


def load_tensors(info: CheckpointInfo, prefix: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read only the tensors whose names start with prefix (e.g. 'model.'), prefix stripped."""
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(str(info.path), framework="pt", device=str(device)) as f:
            for name in f.keys():
                if name.startswith(prefix):
                    out[name[len(prefix):]] = f.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot read tensors from {str(info.path)!r}: {_one_line(e)}") from None
    return out


def build_model(info: CheckpointInfo, device: str | torch.device = "cpu"):
    """Rebuild the GPT from a checkpoint's config and `model.*` tensors; checks every name and shape."""
    from gptkit.config import TrainConfig, approx_params, validate
    from gptkit.model import GPT

    declared = {k[len("model."):]: tuple(v["shape"]) for k, v in info.tensors.items() if k.startswith("model.")}
    stored = sum(math.prod(shape) for shape in declared.values())
    try:
        cfg = info.model_config
        validate(cfg, TrainConfig())
        if approx_params(cfg) > stored:  # a damaged config must not make us build a model the file cannot fill
            raise ValueError(f"it describes ~{approx_params(cfg):,} parameters, the file holds {stored:,}")
        if cfg.pos_encoding == "rope" and cfg.block_size * cfg.head_dim > stored:  # the rotary tables' size
            raise ValueError(f"its rotary tables for block_size {cfg.block_size:,} outweigh the file's {stored:,} weights")
        # built for real, not on the meta device, whose initialisation imports torch._dynamo (slow at
        # every `sample` and `inspect` start); the check above keeps the size to the file's
        model = GPT(cfg)
    except (GptkitError, TypeError, ValueError, ArithmeticError, AssertionError, RuntimeError) as e:
        raise CheckpointError(f"{str(info.path)!r} has an unusable model_config ({_one_line(e)})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{str(info.path)!r} does not match its config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for k, shape in declared.items():
        if shape != expected[k]:
            raise CheckpointError(f"{str(info.path)!r}: tensor {k} has shape {shape}, config needs {expected[k]}")
    model.load_state_dict(load_tensors(info, "model."), strict=False)  # strict=False: lm_head is tied to wte
    return model.to(device)


def load_for_inference(ref: str | Path | None = None, store: Path | None = None,
                       device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, info) from a path or run name; reads no optimizer tensors."""
    from gptkit.tokenizers.stored import tokenizer_from_dict

    info = read_info(resolve(ref, store))
    try:
        tokenizer = tokenizer_from_dict(info.meta["tokenizer"])
    except TokenizerError as e:
        raise CheckpointError(f"{str(info.path)!r} holds a damaged tokenizer: {_one_line(e)}") from None
    model = build_model(info, device)
    if tokenizer.vocab_size > model.config.vocab_size:  # its ids would index past the embedding
        raise CheckpointError(f"{str(info.path)!r} is inconsistent: its tokenizer has {tokenizer.vocab_size} ids, "
                              f"its model {model.config.vocab_size}")
    model.eval()
    return model, tokenizer, info


def list_runs(store: Path) -> list[Path]:
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if p.is_dir() and ((p / LAST).is_file() or (p / BEST).is_file()))


def run_summary(run_dir: Path) -> dict[str, Any]:
    """One run as `gptkit runs` lists it, from its last checkpoint's header (no tensor is read):
    name, last write, steps, tokens seen, parameters, tokenizer, best validation loss in nats/token
    and bits/char, training time. A checkpoint that cannot be read gives {"name", "error"} instead."""
    files = [run_dir / n for n in (LAST, BEST) if (run_dir / n).is_file()]  # last holds the latest step
    out: dict[str, Any] = {"name": run_dir.name, "path": str(files[0]),
                           "updated": max(f.stat().st_mtime for f in files)}
    try:
        info = read_info(files[0])
        cfg = info.model_config
    except (CheckpointError, TypeError) as e:
        return {**out, "error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    st, tok = info.state, info.meta["tokenizer"]
    best, last, last_bpc = st.get("best_val_loss"), st.get("val_loss"), st.get("val_bpc")
    params = sum(math.prod(t["shape"]) for k, t in info.tensors.items() if k.startswith("model."))
    return {**out, "step": st.get("step"), "tokens_seen": st.get("tokens_seen"), "params": params,
            "tokenizer": tok.get("name") or tok.get("kind"), "vocab_size": cfg.vocab_size,
            "best_val_loss": best,  # bits/char from the run's own tokens per char (val_bpc / val_loss)
            "best_val_bpc": best * last_bpc / last if best is not None and last and last_bpc else None,
            "elapsed": st.get("elapsed")}


def val_curve(run_dir: Path, until_step: int | None = None) -> list[dict[str, float]]:
    """The evaluations in a run's metrics.jsonl (up to `until_step`), one per step: the last value of a
    step, so the steps a resumed run repeats count once. A missing or damaged file gives what it can."""
    points: dict[int, dict[str, float]] = {}
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(e, dict) or e.get("event") != "eval" or not isinstance(e.get("step"), int):
            continue
        if until_step is None or e["step"] <= until_step:
            points[e["step"]] = {k: e[k] for k in ("step", "train_loss", "val_loss", "val_bpc", "elapsed") if k in e}
    return [points[s] for s in sorted(points)]


def newest_run(store: Path) -> Path:
    runs = list_runs(store)
    if not runs:
        raise CheckpointError(f"no runs in checkpoint store {str(store)!r}; train one with `gptkit train FILE` "
                              "or pass --checkpoint PATH")

    def mtime(run: Path) -> float:
        return max((run / n).stat().st_mtime for n in (LAST, BEST) if (run / n).is_file())

    return max(runs, key=mtime)


def resolve(ref: str | Path | None, store: Path | None = None, prefer: str = BEST) -> Path:
    """A checkpoint file from: a .safetensors path, a run folder, a run name in the store, or None
    (the newest run). In a run folder `prefer` (best, else last) is taken."""
    store = Path(store) if store is not None else default_store()
    if ref is None or str(ref) == "":
        run = newest_run(store)
    else:
        p = Path(ref)
        if p.is_file():
            return p
        if p.is_dir():
            run = p
        elif (store / str(ref)).is_dir():
            run = store / str(ref)
        else:
            names = ", ".join(r.name for r in list_runs(store)) or "none"
            raise CheckpointError(f"no checkpoint or run named {str(ref)!r} (runs in {str(store)!r}: {names})")
    order = [prefer, LAST if prefer == BEST else BEST]
    for name in order:
        if (run / name).is_file():
            return run / name
    raise CheckpointError(f"run folder {str(run)!r} has no {LAST} or {BEST}; train it with `gptkit train`")
