"""Every bad input, across all commands: one `error:` line naming the fix, a documented exit code, no
traceback, and no file changed. One test per row of README's "What gptkit does with bad input".

The commands run in this process (torch is already imported, so a case costs milliseconds); the
folder they work in is hashed before and after each case to prove nothing was written.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gptkit import checkpoint, runtime
from gptkit.errors import CheckpointError, InputError
from tests.conftest import SHAKESPEARE, assert_one_line_error
from tests.test_properties import with_header

USAGE, INPUT, CKPT = 2, 3, 4  # exit codes: bad flag, bad input file or text, checkpoint


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding a small run trained for real, damaged copies of its checkpoint, and bad files."""
    from gptkit.config import resolve_config
    from gptkit.train import train

    root = tmp_path_factory.mktemp("hardening")
    (root / "tiny.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    mc, tc = resolve_config("tiny", None, dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                                               max_iters=4, eval_interval=2, eval_iters=1, device="cpu"))
    train(mc, tc, str(root / "tiny.txt"), root / "store" / "run", root / "store")
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_bytes(b"  \n\t\n   \n")
    (root / "binary.dat").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    (root / "short.txt").write_text("To be, or not to be.\n" * 2, encoding="utf-8")
    (root / "adir").mkdir()
    (root / "blocker").write_text("a file where a folder should be\n", encoding="utf-8")
    for kind, data in damaged_checkpoints((root / "store" / "run" / checkpoint.LAST).read_bytes()).items():
        (root / "store" / f"bad-{kind}").mkdir()
        (root / "store" / f"bad-{kind}" / checkpoint.LAST).write_bytes(data)
    oversized = root / "store" / "bad-oversized" / checkpoint.LAST
    oversized.parent.mkdir()
    with open(oversized, "wb") as f:  # declares a header just over the limit; sparse, so it costs no disk
        f.write(struct.pack("<Q", checkpoint.MAX_HEADER_BYTES + 8))
        f.truncate(checkpoint.MAX_HEADER_BYTES + 24)
    return root


def damaged_checkpoints(data: bytes) -> dict[str, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])

    def rewritten(edit) -> bytes:
        h = json.loads(json.dumps(header))
        edit(h)
        return with_header(data, h)

    def beyond(h):
        name = next(k for k in h if k.startswith("model."))
        h[name]["data_offsets"] = [len(data), len(data) + 64]

    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buf)  # what `torch.save` writes today: a zip holding a pickle
    return {
        "truncated": data[:len(data) // 2],
        "header": data[:8] + b"\xff\xfe" + data[10:],
        "beyond": rewritten(beyond),
        "newer": rewritten(lambda h: h["__metadata__"].update(format_version="99")),
        "nometa": rewritten(lambda h: h["__metadata__"].pop("tokenizer")),
        "pickle": pickle.dumps({"weight": [0.0] * 16}),  # written here, never loaded
        "torchsave": buf.getvalue(),
    }


def snapshot(root: Path) -> dict[str, tuple]:
    """Every folder and file under root with its size and content hash (size and mtime for big files)."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        if p.is_dir():
            out[str(p.relative_to(root))] = ("dir",)
        elif st.st_size > 1 << 20:
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
        else:
            out[str(p.relative_to(root))] = (st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def run_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process; torch's thread count is restored (sample sets it)."""
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


def refused(capsys, root: Path, args: list[str], code: int | None, *needles: str,
            unchanged: bool = True) -> subprocess.CompletedProcess:
    """Run a bad command: one line on stderr with the needles, the exit code, nothing on stdout, and
    (unless told otherwise) every file under root as it was."""
    before = snapshot(root)
    proc = run_here(capsys, *args)
    assert_one_line_error(proc, *needles)
    assert code is None or proc.returncode == code, (args, proc.stderr)
    assert proc.stdout == "", args
    if unchanged:
        assert snapshot(root) == before, f"{args} changed files"
    return proc


RUN = "store/run"
COMMANDS_READING_A_FILE = {  # command line with F where the file goes, and its exit code for a bad file
    "train": (["train", "F", "--checkpoints", "store", "-q"], INPUT),
    "tokenize": (["tokenize", "--file", "F"], INPUT),
    "tokenize-out": (["tokenize", "F", "--out", "ds"], INPUT),
    "tokenize-train-file": (["tokenize", "--train-file", "F", "hello"], INPUT),
    "sample-prompt-file": (["sample", "-c", RUN, "--prompt-file", "F"], INPUT),
    "inspect-data": (["inspect", RUN, "-p", "the", "--neighbors", "--data", "F"], INPUT),
}


def with_file(name: str, path: str) -> tuple[list[str], int]:
    args, code = COMMANDS_READING_A_FILE[name]
    return [path if a == "F" else a for a in args], code


@pytest.mark.parametrize("command", COMMANDS_READING_A_FILE)
def test_missing_path(work, capsys, monkeypatch, command):
    monkeypatch.chdir(work)
    args, code = with_file(command, "missing.txt")
    refused(capsys, work, args, code, "missing.txt")


def test_missing_checkpoint_or_source(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    for args in (["sample", "-c", "ghost"], ["inspect", "ghost"], ["convert", "ghost", "out"],
                 ["tokenize", "--checkpoint", "ghost", "hi"], ["train", "tiny.txt", "--init-from", "ghost"],
                 ["sample", "-c", "adir"]):
        refused(capsys, work, args, CKPT, "ghost" if "ghost" in args else "adir")


@pytest.mark.parametrize("command", COMMANDS_READING_A_FILE)
def test_directory_where_a_file_is_expected(work, capsys, monkeypatch, command):
    monkeypatch.chdir(work)
    args, code = with_file(command, "adir")
    refused(capsys, work, args, code, "adir", "directory")


def test_directory_as_an_output_file(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    refused(capsys, work, ["tokenize", "hello", "--save-tokenizer", "adir"], INPUT, "adir", "directory")
    # checked before any work: nothing of the view is printed
    refused(capsys, work, ["inspect", RUN, "--save", "adir/x/view.svg"], USAGE, "cannot write", "--save")


@pytest.mark.parametrize("name", ["empty.txt", "blank.txt"])
@pytest.mark.parametrize("command", [c for c in COMMANDS_READING_A_FILE if c != "sample-prompt-file"])
def test_empty_and_whitespace_only_files(work, capsys, monkeypatch, command, name):
    monkeypatch.chdir(work)
    args, code = with_file(command, name)
    refused(capsys, work, args, code, name, "empty" if name == "empty.txt" else "whitespace")


def test_an_empty_prompt_file_is_a_valid_empty_prompt(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    proc = run_here(capsys, "sample", "-c", RUN, "--prompt-file", "empty.txt", "-n", "5", "--seed", "1")
    assert proc.returncode == 0 and proc.stderr == "" and len(proc.stdout) >= 5  # documented, not an error


@pytest.mark.parametrize("command", COMMANDS_READING_A_FILE)
def test_binary_file(work, capsys, monkeypatch, command):
    monkeypatch.chdir(work)
    args, code = with_file(command, "binary.dat")
    refused(capsys, work, args, code, "binary.dat", "binary")


@pytest.mark.parametrize("command", COMMANDS_READING_A_FILE)
def test_invalid_utf8_names_the_byte_offset(work, capsys, monkeypatch, command):
    monkeypatch.chdir(work)
    args, code = with_file(command, "latin1.txt")
    refused(capsys, work, args, code, "not valid UTF-8", "0xe9", "byte offset 3", "iconv")


def test_text_shorter_than_a_block(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    refused(capsys, work, ["train", "short.txt", "--checkpoints", "store", "-q"], INPUT, "needs at least 65",
            "--block-size")  # the tokenized cache it built is removed again: no file changed
    refused(capsys, work, ["train", "tiny.txt", "--checkpoints", "store", "--block-size", "4000"], INPUT,
            "validation split", "--val-fraction")
    refused(capsys, work, ["inspect", RUN, "-p", "x" * 17], USAGE, "block_size")


def drop_root_override() -> None:
    """In the child: give up root's power to write anywhere (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH),
    so a read-only folder is read-only for it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(99)


def test_unwritable_checkpoint_folder(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    # a path through a regular file can never be created
    refused(capsys, work, ["train", "tiny.txt", "--checkpoints", "blocker/store"], CKPT,
            "cannot write to checkpoint folder", "--checkpoints")
    refused(capsys, work, ["train", f"{RUN}/data", "--checkpoints", "blocker/store"], CKPT,
            "cannot write to checkpoint folder")
    refused(capsys, work, ["convert", RUN, "blocker/hf"], CKPT, "cannot create folder", "DST")
    refused(capsys, work, ["tokenize", "tiny.txt", "--out", "blocker/ds"], INPUT, "cannot create dataset folder")
    # a read-only folder, also for root (the child drops root's override of file permissions)
    ro = work / "readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    before = snapshot(work)
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "gptkit", "train", "tiny.txt", "--checkpoints", "readonly", "-q"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=drop_root_override if os.geteuid() == 0 else None)
    if proc.returncode == 99:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
    assert_one_line_error(proc, "cannot write to checkpoint folder", "readonly", "Permission denied")
    assert proc.returncode == CKPT and snapshot(work) == before


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


def test_full_disk(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    shutil.copytree(work / RUN, work / "store" / "full")
    ckpts = {n: (work / "store" / "full" / n).read_bytes() for n in (checkpoint.LAST, checkpoint.BEST)}
    limit = 8192  # room for metrics.jsonl, not for a checkpoint, a dataset or a converted model
    assert (work / "store" / "full" / "metrics.jsonl").stat().st_size < limit // 2 < min(map(len, ckpts.values()))
    with disk_full_after(limit):
        refused(capsys, work, ["train", "--checkpoints", "store", "--run", "full", "--resume", "--max-iters", "6",
                               "-q"], CKPT, "cannot write checkpoint", "unchanged", "free space", unchanged=False)
        refused(capsys, work, ["tokenize", "tiny.txt", "--out", "ds"], INPUT, "cannot write dataset folder",
                "free space")
        refused(capsys, work, ["convert", RUN, "hf"], CKPT, "cannot write", "free space")
    for name, data in ckpts.items():  # the run's checkpoints are the ones from before, byte for byte
        assert (work / "store" / "full" / name).read_bytes() == data
    assert not list((work / "store" / "full").glob(".*tmp*")) and not (work / "ds").exists()
    assert not (work / "hf").exists()
    shutil.rmtree(work / "store" / "full")


# --- numeric flags: every int/float option of every command, found by walking the app ------------

def numeric_options() -> list[tuple[str, str, str]]:
    import typer.main

    from gptkit.cli import app

    found = []
    for name, cmd in typer.main.get_command(app).commands.items():
        for p in cmd.params:
            kind = p.bare_type() if hasattr(p, "bare_type") else getattr(p.type, "name", "")
            if getattr(p, "param_type_name", "option") == "option" and kind in ("int", "integer", "float"):
                found.append((name, p.opts[0], "float" if kind == "float" else "int"))
    return found


# The values a flag accepts on purpose, each with its documented meaning ("0 = off", "0 = greedy").
ACCEPTED = {("train", "--dropout", "0"), ("train", "--min-lr", "0"), ("train", "--warmup-iters", "0"),
            ("train", "--weight-decay", "0"), ("train", "--beta1", "0"), ("train", "--beta2", "0"),
            ("train", "--grad-clip", "0"), ("train", "--seed", "0"), ("train", "--sample-every", "0"),
            ("sample", "--max-new-tokens", "0"), ("sample", "--temperature", "0"), ("sample", "--top-k", "0"),
            ("sample", "--min-p", "0"), ("sample", "--seed", "0"), ("inspect", "--layer", "0"),
            ("inspect", "--head", "0")}
# A command line per command that fails *after* flag checks, with its error: a value that passes the
# checks reaches that error instead, which proves it was accepted.
LATER_ERROR = {
    "train": (["train", "short.txt", "--checkpoints", "store", "-q"], "needs at least", INPUT),
    "sample": (["sample", "-c", RUN, "-p", "안"], "vocabulary lacks", INPUT),
    "inspect": (["inspect", RUN, "-p", "안"], "안", INPUT),
    "tokenize": (["tokenize", "hello", "-t", "no-such-tokenizer"], "unknown tokenizer", INPUT),
}
NUMERIC = numeric_options() + [("train", "--max-time", "duration")]  # a number of seconds, or 90s, 10m


def test_every_command_with_numeric_flags_has_a_later_error():
    assert {c for c, _, _ in NUMERIC} <= set(LATER_ERROR), "add the new command to LATER_ERROR"
    assert len(NUMERIC) >= 35  # the walk found the app's flags


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
@pytest.mark.parametrize("command,flag,kind", NUMERIC, ids=[f"{c}{f}" for c, f, _ in NUMERIC])
def test_negative_zero_nan_for_every_numeric_flag(work, capsys, monkeypatch, command, flag, kind, value):
    monkeypatch.chdir(work)
    base, later, later_code = LATER_ERROR[command]
    proc = refused(capsys, work, [*base, flag, value], None)
    line = proc.stderr.strip()
    if (command, flag, value) in ACCEPTED:  # passed the checks, and failed later for the planted reason
        assert later in line and flag not in line and proc.returncode == later_code, line
    else:
        assert flag in line and proc.returncode == USAGE, line


def test_absurd_sizes_are_refused_against_available_memory(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    avail = runtime.available_memory(torch.device("cpu"))
    assert avail is not None and avail > 1 << 27  # /proc/meminfo (or the cgroup limit) was read
    for args, needles in [
        (["train", "tiny.txt", "--checkpoints", "store", "--batch-size", "1000000000"], ["--batch-size"]),
        (["train", "tiny.txt", "--checkpoints", "store", "--n-layer", "100000", "--n-embd", "4096"], ["parameters"]),
        (["sample", "-c", RUN, "-p", "a", "--num-samples", "100000000000"], ["--num-samples"]),
        (["sample", "-c", RUN, "-p", "a", "-n", "10000000000000"], ["--max-new-tokens"]),
    ]:
        refused(capsys, work, args, USAGE, "memory", "available", *needles)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_the_memory_estimate_counts_parameters_like_the_model(mlp):
    from gptkit.config import ModelConfig
    from gptkit.model import GPT

    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=300, mlp=mlp)
    assert runtime.approx_params(cfg) == pytest.approx(GPT(cfg).num_params(), rel=0.05)


def test_flags_that_conflict_with_the_checkpoint(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    resume = ["train", "--checkpoints", "store", "--run", "run", "--resume"]
    refused(capsys, work, [*resume, "--n-layer", "3"], USAGE, "--n-layer 3 conflicts", "drop the flag")
    refused(capsys, work, [*resume, "--block-size", "32"], USAGE, "--block-size 32 conflicts")
    refused(capsys, work, [*resume, "--tokenizer", "byte"], USAGE, "--tokenizer byte conflicts", "char")
    refused(capsys, work, [*resume, "--vocab-size", "1024"], USAGE, "--vocab-size 1024 conflicts", "char")
    refused(capsys, work, ["train", "tiny.txt", "--checkpoints", "store", "--init-from", RUN, "--n-embd", "32"],
            USAGE, "--n-embd 32 conflicts", "--init-from")
    refused(capsys, work, ["train", "tiny.txt", "--checkpoints", "store", "--run", "run"], USAGE, "--resume",
            "--overwrite")


def test_unknown_tokenizer_names(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    for args in (["train", "tiny.txt", "--checkpoints", "store", "--tokenizer", "gpt5"],
                 ["tokenize", "-t", "gpt5", "hello"], ["tokenize", "--compare", "byte,gpt5", "tiny.txt"]):
        refused(capsys, work, args, INPUT, "unknown tokenizer 'gpt5'", "cl100k_base")


DAMAGE = {"truncated": "truncated", "header": "corrupted", "beyond": "beyond the file's end",
          "newer": "upgrade gptkit", "nometa": "lacks metadata tokenizer", "pickle": "not a valid safetensors",
          "torchsave": "not a valid safetensors", "oversized": "header"}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoints(work, capsys, monkeypatch, kind):
    monkeypatch.chdir(work)
    path = f"store/bad-{kind}/{checkpoint.LAST}"
    for args in (["sample", "-c", path, "-p", "a"], ["inspect", path], ["convert", path, "out"],
                 ["tokenize", "--checkpoint", path, "hello"],
                 ["train", "tiny.txt", "--checkpoints", "store", "--init-from", path],
                 ["train", "--checkpoints", "store", "--run", f"bad-{kind}", "--resume"]):
        refused(capsys, work, args, CKPT, DAMAGE[kind])


def test_oversized_header_is_refused_before_reading_it(work):
    path = work / "store" / "bad-oversized" / checkpoint.LAST
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    assert n > checkpoint.MAX_HEADER_BYTES and n + 8 <= path.stat().st_size  # only the limit can refuse it
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="header"):
            checkpoint.read_info(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused from its first 8 bytes: the 64 MiB header was never read


def test_debug_shows_the_traceback(work, capsys, monkeypatch):
    from gptkit.cli import main

    monkeypatch.chdir(work)
    with pytest.raises(InputError, match="does not exist"):
        main(["--debug", "train", "missing.txt"])
    proc = run_here(capsys, "train", "missing.txt")  # and the next command is back to one line
    assert_one_line_error(proc, "does not exist")
    assert proc.returncode == INPUT
