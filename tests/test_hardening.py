"""Every bad input, across all commands: one `error:` line naming the fix, a documented exit code, no
traceback, and no file changed. One test per row of docs/errors.md (the table cites each test by name): here
missing and wrong paths, bad text, bad flags and sizes; damaged checkpoints, unwritable places and a
full disk in test_hardening_storage.py, which shares this file's folder and helpers.

The commands run in this process (torch is already imported, so a case costs milliseconds); the
folder they work in is hashed before and after each case to prove nothing was written.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch

from gptkit import memory
from gptkit.errors import InputError
from tests.conftest import SHAKESPEARE, assert_one_line_error, run_here

USAGE, INPUT, CKPT = 2, 3, 4  # exit codes: bad flag, bad input file or text, checkpoint


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_work(tmp_path_factory.mktemp("hardening"))


def make_work(root: Path) -> Path:
    """Fill `root` with a small run trained for real and bad files; the commands run inside it."""
    from gptkit.config import resolve_config
    from gptkit.train import train

    (root / "tiny.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    mc, tc = resolve_config("tiny", None, dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                                               max_iters=4, eval_interval=2, eval_iters=1, device="cpu"))
    train(mc, tc, str(root / "tiny.txt"), root / "store" / "run", root / "store")
    (root / "empty.txt").write_bytes(b"")
    (root / "bom.txt").write_bytes(b"\xef\xbb\xbf")  # a byte-order mark and nothing else: empty text
    (root / "blank.txt").write_bytes(b"  \n\t\n   \n")
    (root / "binary.dat").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    (root / "cut.txt").write_bytes("봄비가 내린다\n".encode()[:-2])  # `head -c` through the last syllable: 2 of its 3 bytes
    (root / "short.txt").write_text("To be, or not to be.\n" * 2, encoding="utf-8")
    (root / "adir").mkdir()
    (root / "blocker").write_text("a file where a folder should be\n", encoding="utf-8")
    return root


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


@pytest.mark.parametrize("name", ["empty.txt", "blank.txt"])
@pytest.mark.parametrize("command", [c for c in COMMANDS_READING_A_FILE if c != "sample-prompt-file"])
def test_empty_and_whitespace_only_files(work, capsys, monkeypatch, command, name):
    monkeypatch.chdir(work)
    args, code = with_file(command, name)
    refused(capsys, work, args, code, name, "empty" if name == "empty.txt" else "whitespace")


@pytest.mark.parametrize("name", ["empty.txt", "bom.txt"])
def test_an_empty_prompt_file_is_a_valid_empty_prompt(work, capsys, monkeypatch, name):
    monkeypatch.chdir(work)
    proc = run_here(capsys, "sample", "-c", RUN, "--prompt-file", name, "-n", "5", "--seed", "1")
    assert proc.returncode == 0 and proc.stderr == "" and len(proc.stdout) >= 5  # documented, not an error


def test_a_command_line_argument_that_is_not_utf8(work, capsys, monkeypatch):
    """Python hands argv's bytes that are not UTF-8 over as lone surrogates: they are named like a
    file's bad byte, instead of failing later (a traceback when the prompt is echoed)."""
    monkeypatch.chdir(work)
    bad = b"ROM\xe9O".decode("utf-8", "surrogateescape")
    for args in (["sample", "-c", RUN, "-p", bad], ["tokenize", bad, "-t", "byte"], ["inspect", RUN, "-p", bad]):
        refused(capsys, work, args, INPUT, "not valid UTF-8", "0xe9", "byte offset 3")


def test_extreme_but_valid_sampling_values(work, capsys, monkeypatch):
    """A temperature of 1e-40 divides the logits past float32's range unless handled: it is greedy in
    the limit. Extreme repetition penalties overflow the same way."""
    monkeypatch.chdir(work)
    base = ["sample", "-c", RUN, "-p", "the", "-n", "20", "--seed", "1"]
    greedy = run_here(capsys, *base, "--temperature", "0")
    assert greedy.returncode == 0
    for t in ("1e-40", "1e-320"):  # below float32's smallest number, and below its smallest normal one
        assert run_here(capsys, *base, "--temperature", t).stdout == greedy.stdout, t
    for penalty in ("1e-40", "1e40"):
        proc = run_here(capsys, *base, "--repetition-penalty", penalty)
        assert proc.returncode == 0 and proc.stderr == "" and len(proc.stdout) >= 20, proc.stderr


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


@pytest.mark.parametrize("command", COMMANDS_READING_A_FILE)
def test_utf8_cut_off_at_the_end_is_named_as_such(work, capsys, monkeypatch, command):
    monkeypatch.chdir(work)
    args, code = with_file(command, "cut.txt")
    refused(capsys, work, args, code, "cut.txt", "ends in the middle of a character", "last 2 byte(s)",
            "byte offset 16", "head -c")


def test_text_shorter_than_a_block(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    refused(capsys, work, ["train", "short.txt", "--checkpoints", "store", "-q"], INPUT, "needs at least 65",
            "--block-size")  # the tokenized cache it built is removed again: no file changed
    refused(capsys, work, ["train", "tiny.txt", "--checkpoints", "store", "--block-size", "4000"], INPUT,
            "validation split", "--val-fraction")
    refused(capsys, work, ["inspect", RUN, "-p", "x" * 17], USAGE, "block_size")


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
            ("inspect", "--head", "0"), ("inspect", "--seed", "0")}
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
    avail = memory.available_memory(torch.device("cpu"))
    assert avail is not None and avail > 1 << 27  # /proc/meminfo (or the cgroup limit) was read
    for args, needles in [
        (["train", "tiny.txt", "--checkpoints", "store", "--batch-size", "1000000000"], ["--batch-size"]),
        (["train", "tiny.txt", "--checkpoints", "store", "--n-layer", "100000", "--n-embd", "4096"], ["parameters"]),
        (["sample", "-c", RUN, "-p", "a", "--num-samples", "100000000000"], ["--num-samples"]),
        (["sample", "-c", RUN, "-p", "a", "-n", "10000000000000"], ["--max-new-tokens"]),
    ]:
        refused(capsys, work, args, USAGE, "memory", "available", *needles)


def test_the_memory_check_turned_off_lets_an_absurd_size_through_to_the_next_check(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    absurd = ["train", "short.txt", "--store", "store", "--batch-size", "1000000000"]
    refused(capsys, work, absurd, USAGE, "memory", "available", "--batch-size")
    monkeypatch.setenv("GPTKIT_MEMORY_CHECK", "0")
    refused(capsys, work, absurd, INPUT, "needs at least 65", "--block-size")  # the text is too short for a block


def test_available_memory_is_meminfos_lowered_to_a_containers_room(tmp_path, monkeypatch):
    """/proc/meminfo's MemAvailable, or less: what a cgroup (v2 memory.max, else v1 limit_in_bytes)
    leaves of its limit; "max" is no limit. A GPU's is its free memory."""
    cpu, cg = torch.device("cpu"), tmp_path / "cgroup"
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:  1000 kB\nMemAvailable:    8192000 kB\n")
    cg.mkdir()

    def avail() -> int | None:
        return memory.available_memory(cpu, str(meminfo), str(cg))

    assert avail() == 8192000 * 1024  # no cgroup files: not in a container
    (cg / "memory.max").write_text("max\n")
    (cg / "memory.current").write_text(f"{2**30}\n")
    assert avail() == 8192000 * 1024
    (cg / "memory.max").write_text(f"{3 * 2**30}\n")
    assert avail() == 2 * 2**30  # 3 GiB limit, 1 GiB used
    (cg / "memory.max").write_text(f"{64 * 2**30}\n")
    assert avail() == 8192000 * 1024  # a limit above what the machine has left
    for name in ("memory.max", "memory.current"):
        (cg / name).unlink()
    (cg / "memory").mkdir()
    (cg / "memory" / "memory.limit_in_bytes").write_text(f"{2**31}\n")
    (cg / "memory" / "memory.usage_in_bytes").write_text(f"{2**29}\n")
    assert avail() == 3 * 2**29  # v1: 2 GiB limit, 0.5 GiB used
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5 * 2**30, 80 * 2**30))
    assert memory.available_memory(torch.device("cuda", 0)) == 5 * 2**30


def test_numbers_too_large_for_the_libraries_below(work, capsys, monkeypatch):
    """rustbpe counts its vocabulary in 32 bits and torch its threads in a C int: past those, one
    line naming the flag instead of an OverflowError from inside the library."""
    monkeypatch.chdir(work)
    for args in (["tokenize", "hello", "-t", "bpe", "--vocab-size", str(2**32)],
                 ["train", "tiny.txt", "--checkpoints", "store", "--tokenizer", "bpe", "--vocab-size", str(2**32)],
                 ["sample", "-c", RUN, "-p", "a", "--threads", str(2**31)]):
        refused(capsys, work, args, USAGE, args[-2])


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_the_memory_estimate_counts_parameters_like_the_model(mlp):
    from gptkit.config import ModelConfig, approx_params
    from gptkit.model import GPT

    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=300, mlp=mlp)
    assert approx_params(cfg) == pytest.approx(GPT(cfg).num_params(), rel=0.05)


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


def test_debug_shows_the_traceback(work, capsys, monkeypatch):
    from gptkit.cli import main

    monkeypatch.chdir(work)
    with pytest.raises(InputError, match="does not exist"):
        main(["--debug", "train", "missing.txt"])
    proc = run_here(capsys, "train", "missing.txt")  # and the next command is back to one line
    assert_one_line_error(proc, "does not exist")
    assert proc.returncode == INPUT
