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
    # the first line: the preset a CPU gets, and exactly the settings these flags change from it
    assert proc.stderr.splitlines()[0] == ("settings: preset quick (the default on cpu); differs: n_layer=2, "
                                           "n_embd=64, block_size=32, max_iters=60, eval_interval=30, eval_iters=5")
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


def test_the_settings_line_comes_before_what_the_dataset_build_prints(tmp_path, capsys):
    """The build reports before the run starts (here: the file --skip-bad left out); the settings still
    come first, and a resumed run's first line names only what that command changes."""
    from tests.conftest import run_here

    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    (tmp_path / "texts" / "b.bin").write_bytes(b"\x00\x01binary" * 100)
    tiny = ["--n-layer", "1", "--n-embd", "32", "--block-size", "16", "--eval-iters", "2", "--store", str(tmp_path / "s")]
    proc = run_here(capsys, "train", str(tmp_path / "texts"), "--skip-bad", "--max-iters", "2", *tiny)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == ("settings: preset quick (the default on cpu); differs: n_layer=1, n_embd=32, block_size=16, "
                        "max_iters=2, eval_iters=2")
    assert lines[1].startswith("skipped 1 bad file (--skip-bad): ") and "b.bin" in lines[1], lines[:3]
    again = run_here(capsys, "train", "--run", "texts", "--resume", "--max-iters", "3", *tiny[-2:])
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[0] == "settings: the resumed run's own; changed by this command: max_iters=3"


@pytest.mark.parametrize("content", [b"", b"   \n\n", b"\xff\xfe\x00bad", b"abc\xc3\x28def"])
def test_bad_training_files(tmp_path, content, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in this process: the refusal is about the file, not the process
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    assert_one_line_error(run_here(capsys, "train", str(f)))
    assert not (tmp_path / "checkpoints" / "bad" / "last.safetensors").exists()


# `train missing.txt`, `sample --temperature -1` and `sample -c ghost` are rows of test_hardening.py
@pytest.mark.parametrize("args,needle", [
    (["train", str(SHAKESPEARE), "--preset", "huge"], "huge"),
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


def test_train_help_states_the_defaults_a_cpu_gets_and_says_so_once():
    """Without --preset a CPU trains `quick`, so `--batch-size [default: 12]` (the dataclass's) was wrong;
    each option shows the value a CPU run really uses, and the command's help says whose they are."""
    import typer

    from gptkit.cli import app
    from gptkit.config import ModelConfig, TrainConfig, resolve_config

    train = typer.main.get_command(app).commands["train"]
    helps = {p.name: p.help for p in train.params if p.help}
    mc, tc = resolve_config(None, None, {}, device_type="cpu")  # what a CPU run actually uses
    assert (mc.pos_encoding, tc.optimizer, tc.tokens_per_step) != ("learned", "adamw", None)  # quick is not the dataclass
    for name in ("tokens_per_step", "max_iters", "learning_rate", "pos_encoding", "optimizer", "n_layer", "norm", "seed"):
        value = getattr(tc, name, getattr(mc, name, None))
        assert helps[name].endswith(f"[default: {value}]"), helps[name]
    assert "[default: None]" not in " ".join(helps.values())
    for name in ("vocab_size", "batch_size", "grad_accum", "log_interval", "max_time", "compile"):  # unset: prose says
        assert "[default:" not in helps[name] and ("default" in helps[name] or "unset" in helps[name]), helps[name]
    assert "quick preset" in train.help and train.help.count("quick") == 1
    assert {f.name for f in [*ModelConfig.__dataclass_fields__.values(), *TrainConfig.__dataclass_fields__.values()]
            } - {"vocab_size"} <= set(helps) | {"vocab_size"}


def test_no_help_shows_default_none_and_choices_are_listed_and_enforced(tmp_path):
    import typer

    from gptkit.cli import app

    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        text = cmd.get_help(cmd.context_class(cmd, info_name=name, parent=root.context_class(root, info_name="gptkit")))
        assert "[default: None]" not in text, name
    train_help = run_cli("train", "--help").stdout
    assert "<adamw|muon>" in train_help and "<learned|rope>" in train_help and "<quick|tiny|small|baby|gpt2>" in train_help
    assert "<auto|off>" in run_cli("sample", "--help").stdout
    for args in (["train", "--optimizer", "sgd"], ["train", "--preset", "huge"], ["sample", "--dtype", "fp8"],
                 ["train", "--norm", "batchnorm"], ["convert", "a", "b", "--dtype", "auto"]):
        proc = run_cli(*args, cwd=tmp_path)
        assert_one_line_error(proc, args[-2])
        assert proc.returncode == 2 and "is not one of" in proc.stderr, proc.stderr


def test_commands_are_listed_in_the_order_a_user_works():
    out = run_cli("--help").stdout
    listed = [ln.split()[0] for ln in out.split("Commands:")[1].splitlines() if ln.strip()]
    assert listed == ["tokenize", "train", "sample", "inspect", "runs", "convert"]
