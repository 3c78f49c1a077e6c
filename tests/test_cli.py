"""The command line as a user meets it: train then sample, one-line errors, a torch-free --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import SHAKESPEARE, assert_one_line_error, run_cli, run_here


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from gptkit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'numpy' not in sys.modules, 'numpy imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "sample" in proc.stdout and "--n-layer" in proc.stdout
    assert run_cli("--version").stdout.startswith("gptkit ")


def test_sampling_does_not_import_the_compiler(trained_run):
    """`gptkit sample` is called in loops: torch._dynamo (~2 s to import) loads only with --compile."""
    args = ["sample", "--checkpoints", str(trained_run["store"]), "-c", "shakespeare", "-p", "ROMEO:", "-n", "20"]
    code = ("import sys; from gptkit.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' in sys.modules and 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout) > 20


def test_train_then_sample_end_to_end(tmp_path):
    proc = run_cli("train", str(SHAKESPEARE), "--max-iters", "60", "--eval-interval", "30", "--eval-iters", "5",
                   "--n-layer", "2", "--n-embd", "64", "--block-size", "32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # progress goes to stderr; stdout is for product output
    assert "val loss" in proc.stderr and "bits/char" in proc.stderr
    assert "└" in proc.stderr and "sample -c tinyshakespeare" in proc.stderr  # the curve, then what to run next
    assert (tmp_path / "checkpoints" / "tinyshakespeare" / "last.safetensors").is_file()
    out = run_cli("sample", "--prompt", "ROMEO:", "-n", "40", "--seed", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ROMEO:") and len(out.stdout) > 30
    assert out.stderr == ""
    # a second train of the same file does not overwrite the first run
    again = run_cli("train", str(SHAKESPEARE), "--max-iters", "5", "--eval-iters", "2", "--n-layer", "1",
                    "--n-embd", "32", "--block-size", "16", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "checkpoints" / "tinyshakespeare-2" / "last.safetensors").is_file()


@pytest.mark.parametrize("content", [b"", b"   \n\n", b"\xff\xfe\x00bad", b"abc\xc3\x28def"])
def test_bad_training_files(tmp_path, content, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in this process: the refusal is about the file, not the process
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    assert_one_line_error(run_here(capsys, "train", str(f)))
    assert not (tmp_path / "checkpoints" / "bad" / "last.safetensors").exists()


# `train missing.txt`, `sample --temperature -1` and `sample -c ghost` are rows of test_hardening.py
@pytest.mark.parametrize("args,needle", [
    (["train", str(SHAKESPEARE), "--preset", "huge"], "unknown preset"),
    (["train", str(SHAKESPEARE), "--max-time", "soon"], "duration"),
    (["train", str(SHAKESPEARE), "--max-iters", "abc"], "max-iters"),
    (["train", str(SHAKESPEARE), "--n-embd", "100", "--n-head", "3"], "multiple"),
    (["train", str(SHAKESPEARE), "--tokenizer", "nope"], "nope"),
    (["train", str(SHAKESPEARE), "--block-size", "2000000"], "block-size"),
    (["sample"], "no runs"),
    (["bogus"], "bogus"),
])
def test_bad_input_gives_one_line_error(tmp_path, args, needle, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_here(capsys, *args), needle)


def test_a_bad_command_exits_2_from_a_real_process(tmp_path):
    proc = run_cli("bogus", cwd=tmp_path)
    assert_one_line_error(proc, "bogus")
    assert proc.returncode == 2


def test_non_utf8_error_names_the_byte_offset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    assert_one_line_error(run_here(capsys, "train", str(f)), "byte offset 3")


def test_korean_prompt_on_a_char_model_without_hangul(tmp_path, trained_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_here(capsys, "sample", "-c", str(trained_run["run_dir"]), "--prompt", "안녕"), "안")


def test_train_help_states_the_defaults_a_cpu_gets():
    """Without --preset a CPU trains `quick`, so `--batch-size [default: 12]` (the dataclass's) was wrong."""
    import typer

    from gptkit.cli import app
    from gptkit.config import PRESETS, resolve_config

    train = typer.main.get_command(app).commands["train"]
    helps = {p.name: p.help for p in train.params if p.help}
    mc, tc = resolve_config(None, None, {}, device_type="cpu")  # what a CPU run actually uses
    for name in ("tokens_per_step", "max_iters", "learning_rate", "pos_encoding", "optimizer", "n_layer"):
        value = getattr(tc, name, getattr(mc, name, None))
        assert f"[default: {value} on CPU (quick preset)" in helps[name], helps[name]
    assert helps["pos_encoding"].endswith("else learned]")  # only quick changes it
    assert "unless --preset baby sets it" in helps["dropout"] and "baby" in PRESETS
    assert helps["norm"].endswith("[default: layernorm]")  # no preset sets it
