"""Shared fixtures: the real corpora shipped in tests/data (see its README), offline tiktoken, one
small model trained for real once per test session (and its checkpoint), and CLI runners: in a
process of its own (on Linux a forked copy of a server that has imported torch: tests/forkserver.py),
or in this process for cases that must cost milliseconds."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GPTKIT_TEST_DATA") or ROOT / "tests" / "data")
SHAKESPEARE = DATA / "tinyshakespeare.txt"
KOREAN = DATA / "korean.txt"  # the first 400k characters of the Korean novels
ENGLISH = DATA / "english.txt"  # the first 200k characters of Pride and Prejudice
os.environ["TIKTOKEN_CACHE_DIR"] = str(DATA / "tiktoken")  # gpt2 / cl100k_base load offline
# the suite runs on pytest-xdist workers (pyproject's addopts; `-n 0` runs it in one process): the
# cores are shared among them, so each worker's torch and CLI children get their share of threads
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # macOS: no affinity
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, CORES // WORKERS))
    # inductor compiles its C++ kernels in a pool of processes, one a core, each importing torch: on
    # a worker's share of the cores that pool only adds processes fighting the other workers for them
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, CORES // WORKERS)))
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
# every training (in this process and in the CLI's) would time 0.2 s of matmuls for its MFU line;
# test_gpu_paths.py runs that probe itself
os.environ.setdefault("GPTKIT_PEAK_FLOPS", "1e12")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers only ever loads local folders here


# what README's test command installs (`pip install -e '.[dev,hf]'`): under .ci/run (GPTKIT_CI=1) a
# missing one fails the session instead of skipping the tests that need it
CI_REQUIRES = {"transformers": "hf", "hypothesis": "dev", "ruff": "dev", "pytest_timeout": "dev", "xdist": "dev"}


def pytest_addoption(parser):
    import importlib.util

    if importlib.util.find_spec("pytest_timeout") is None:  # without the plugin, its setting is a no-op, not a warning
        parser.addini("timeout", "per-test timeout (pytest-timeout)")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker a core, at most 4: each holds torch, its models and its CLI children in memory."""
    return max(1, min(4, CORES))


# session fixtures that one worker builds for all (built_once below)
BUILT_ONCE = {"trained_run", "korean_bpe_run", "korean_bytes"}


def pytest_collection_modifyitems(config, items):
    """The tests that need a built-once fixture run first, in their files' order. xdist hands each
    worker a contiguous share of this list, so the first worker's share starts with them: it builds
    each fixture while the others run tests that need none, instead of waiting on the build's lock."""
    items.sort(key=lambda item: not BUILT_ONCE & set(getattr(item, "fixturenames", ())))


def pytest_configure(config):
    if os.environ.get("GPTKIT_CI") != "1":
        return
    import importlib.util

    missing = [f"{m} (.[{extra}])" for m, extra in CI_REQUIRES.items() if importlib.util.find_spec(m) is None]
    if not missing and not config.pluginmanager.hasplugin("timeout"):
        missing = ["the pytest-timeout plugin is not loaded"]
    if missing:
        raise pytest.UsageError("GPTKIT_CI=1 needs " + ", ".join(missing) + ": tests would be skipped")


# how a CLI test's commands run: tests/forkserver.py (Linux; GPTKIT_TEST_FORK=0 turns it off)
FORK = sys.platform.startswith("linux") and os.environ.get("GPTKIT_TEST_FORK", "1") != "0"
_fork_server: list = []  # this worker's (server, client argv), started by the first command that needs it


def cli_env(**extra: str) -> dict[str, str]:
    """The environment a CLI test runs `python` in: this one, with plain (uncoloured) UTF-8 output."""
    return {**os.environ, "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8", **extra}


def cli_python() -> list[str]:
    """The argv that runs `python ARGS` as its own process: a fresh interpreter costs 2-3 s of CPU for
    torch's import, so on Linux it is a forked copy of a server that has imported torch once (this
    worker's; see tests/forkserver.py, which execs a fresh interpreter when the copy could not behave
    as one). A test about the interpreter itself (what it imports, its memory) uses sys.executable."""
    if not FORK:
        return [sys.executable]
    if not _fork_server:
        import atexit
        import tempfile

        from tests import forkserver

        sock = os.path.join(tempfile.mkdtemp(prefix="gptkit-fork-"), "s")  # a socket's path has ~100 bytes
        server = forkserver.start(sock, cli_env())
        atexit.register(forkserver.stop, server)
        _fork_server.append((server, forkserver.client_argv(sock)))
    return list(_fork_server[0][1])


def gptkit_argv() -> list[str]:
    """`python -m gptkit` as cli_python runs it."""
    return [*cli_python(), "-m", "gptkit"]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m gptkit ARGS` as a user would (its own process), capturing stdout and stderr as text."""
    return subprocess.run([*gptkit_argv(), *args], cwd=cwd, env=cli_env(**(env or {})), input=input,
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's thread count set to n inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (torch is already imported here, so each case costs milliseconds), its
    output taken from capsys; torch's thread count is restored afterwards (sample sets it)."""
    import torch

    from gptkit.cli import main

    threads = torch.get_num_threads()
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@contextmanager
def disk_full_after(limit: int):
    """Writes that would make a file bigger than `limit` bytes fail with EFBIG ("File too large"), as
    on a full disk: a real failing write() from the kernel, for this process only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get an error instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, exactly one `error: ...` line on stderr, no traceback."""
    assert proc.returncode != 0, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def recorded_eval(model, run_dir: Path, name: str = "last.safetensors") -> tuple[float, float]:
    """(held-out loss the checkpoint records, that of `model` measured as training measured it: the
    run's dataset, its evaluation batches (a fixed seed), its micro-batch and precision). Only the
    weights that were trained reproduce the recorded figure; a load that dropped or mixed up a
    tensor does not."""
    import json

    import torch

    from gptkit import checkpoint, runtime
    from gptkit.config import ModelConfig, TrainConfig
    from gptkit.data.dataset import load_dataset
    from gptkit.evaluate import estimate_loss

    info = checkpoint.read_info(run_dir / name)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    start = [e for e in events if e["event"] == "start"][-1]
    mc, tc = ModelConfig(**info.meta["model_config"]), TrainConfig(**info.meta["train_config"])
    ds = load_dataset(info.state["data"]["dataset"])
    losses = estimate_loss(model, ds, mc, tc, torch.device("cpu"), getattr(torch, start["dtype"]),
                           runtime.DistInfo(), start["batch_size"])
    return info.state["val_loss"], losses["val"]


def reference_losses(data_dir: Path) -> dict[str, float]:
    """Cross-entropies (nats per token) of a dataset's validation split under two references fitted on
    its training split that see no context: the unigram, and the add-one bigram (the previous token
    only). A model that learned nothing from attention gets no lower than the bigram."""
    import numpy as np

    from gptkit.data.dataset import load_dataset

    ds = load_dataset(data_dir)
    train, val, v = np.asarray(ds.train, dtype=np.int64), np.asarray(ds.val, dtype=np.int64), ds.tokenizer.vocab_size
    uni = np.bincount(train, minlength=v) + 1.0
    pairs = np.ones((v, v))
    np.add.at(pairs, (train[:-1], train[1:]), 1.0)
    pairs /= pairs.sum(axis=1, keepdims=True)
    return {"unigram": float(-np.log(uni[val] / uni.sum()).mean()),
            "bigram": float(-np.log(pairs[val[:-1], val[1:]]).mean())}


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def korean_text() -> str:
    return KOREAN.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def builtin_corpus_file(tmp_path_factory) -> Path:
    """The built-in corpus (the standard library's docstrings), built once for the session: a build
    takes seconds; test_corpus.py checks the build itself and its cache."""
    from gptkit.data.sources import builtin_corpus

    return builtin_corpus(tmp_path_factory.mktemp("builtin"))


def seed_builtin_corpus(built: Path, store: Path) -> None:
    """Put the session's built-in corpus where a `gptkit train` with no input finds its cache in `store`."""
    import shutil

    target = store / ".cache" / "corpus" / built.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, target)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `build(folder)` fills, built once for the whole session: the first xdist worker to
    ask builds it while any other that asks waits, then every worker reads it (the tests that use such
    a folder only read it). A trained fixture then costs its training once, not once a worker. The
    build keeps the worker's share of the cores: the other workers are mostly running tests, not
    waiting, and torch with more threads than free cores slows every process on the machine."""
    import shutil

    from gptkit.fsio import file_lock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if WORKERS > 1 else base  # every worker's basetemp sits in the session's folder
    folder, done = root / name, root / f"{name}.done"
    with file_lock(root / f".{name}.lock", wait=600):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A 4-layer char model trained for real on tinyshakespeare (about 20 s): the shared checkpoint."""
    import json

    from gptkit.config import resolve_config
    from gptkit.loop import TrainResult
    from gptkit.train import train

    def build(store: Path) -> None:
        mc, tc = resolve_config("tiny", None, dict(max_iters=400, eval_interval=200, eval_iters=20, block_size=64))
        events: list[dict] = []
        result = train(mc, tc, str(SHAKESPEARE), store / "shakespeare", store, on_event=events.append)
        fields = {k: str(v) if isinstance(v, Path) else v for k, v in vars(result).items()}
        (store / "run.json").write_text(json.dumps({"result": fields, "events": events}), encoding="utf-8")

    store = built_once(tmp_path_factory, "trained-store", build)
    saved = json.loads((store / "run.json").read_text(encoding="utf-8"))
    result = TrainResult(**{k: Path(v) if k in ("run_dir", "checkpoint") and v else v
                            for k, v in saved["result"].items()})
    return {"store": store, "run_dir": store / "shakespeare", "result": result, "events": saved["events"]}


@pytest.fixture(scope="session")
def korean_bpe_run(tmp_path_factory):
    """A 2-layer bpe model (512 ids) trained for real on Korean (about 4 s): common syllables are whole
    tokens (two terminal cells wide), a rare one like 뷁 is split into byte pieces (<0xEB> <0xB7> <0x81>)."""
    from gptkit.config import resolve_config
    from gptkit.train import train

    def build(store: Path) -> None:
        (store / "ko.txt").write_text(KOREAN.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
        mc, tc = resolve_config("tiny", None, dict(tokenizer="bpe", vocab_size=512, n_layer=2, n_head=2, n_embd=64,
                                                   block_size=32, max_iters=60, eval_interval=60, eval_iters=2))
        train(mc, tc, str(store / "ko.txt"), store / "ko", store)

    return built_once(tmp_path_factory, "ko-bpe", build) / "ko"
