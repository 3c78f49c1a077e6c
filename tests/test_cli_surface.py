"""The command line speaks one language: a short flag means one thing in every command, the store
option is --store (its old name --checkpoints still works, hidden), --debug works after a command
and as GPTKIT_DEBUG=1, train --print-config writes the settings a run would use as a config file
that reads back to the same settings, and the two busiest commands stay short.

The app is walked through click, so a flag added to any command is checked without editing this file.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import typer

from gptkit.errors import InputError
from tests.conftest import ROOT, assert_one_line_error, run_cli, run_here


def commands() -> dict[str, object]:
    from gptkit.cli import app

    root = typer.main.get_command(app)
    return {"gptkit": root, **{f"gptkit {n}": c for n, c in root.commands.items()}}


def short_flag_meanings(cmds: dict[str, object]) -> dict[str, dict[str, set[str]]]:
    """{'-c': {'--checkpoint': {'gptkit sample', ...}}}: each short flag, by the long names it stands for."""
    out: dict[str, dict[str, set[str]]] = {}
    for where, cmd in cmds.items():
        for p in cmd.params:
            names = [*p.opts, *getattr(p, "secondary_opts", [])]
            shorts = [n for n in names if len(n) == 2 and n.startswith("-")]
            longs = ", ".join(sorted(n for n in names if n.startswith("--"))) or "(none)"
            for s in shorts:
                out.setdefault(s, {}).setdefault(longs, set()).add(where)
    return out


def conflicts(meanings: dict[str, dict[str, set[str]]]) -> list[str]:
    return [f"{short} means {' and '.join(sorted(by_long))}" for short, by_long in sorted(meanings.items())
            if len(by_long) > 1]


def test_no_short_flag_means_two_things_across_commands():
    meanings = short_flag_meanings(commands())
    assert conflicts(meanings) == []
    # the letters the project reserves, each for its one meaning (where a command takes the option)
    expected = {"-c": "--checkpoint", "-p": "--prompt", "-t": "--tokenizer", "-n": "--max-new-tokens",
                "-s": "--seed", "-o": "--out", "-q": "--quiet", "-v": "--verbose"}
    for short, long in expected.items():
        assert set(meanings[short]) == {long}, (short, meanings[short])
    assert set(meanings["-c"][ "--checkpoint"]) >= {"gptkit sample", "gptkit inspect", "gptkit tokenize"}
    assert set(meanings["-p"]["--prompt"]) == {"gptkit sample", "gptkit inspect"}
    assert set(meanings["-q"]["--quiet"]) >= {"gptkit train", "gptkit tokenize"}


def test_the_check_finds_a_letter_with_two_meanings():
    """Today's code before the fix: -p was train's --preset and sample's --prompt."""
    class Opt:
        def __init__(self, *opts):
            self.opts, self.secondary_opts = list(opts), []

    class Cmd:
        def __init__(self, *params):
            self.params = list(params)

    planted = {"gptkit train": Cmd(Opt("--preset", "-p")), "gptkit sample": Cmd(Opt("--prompt", "-p"), Opt("-n"))}
    assert conflicts(short_flag_meanings(planted)) == ["-p means --preset and --prompt"]
    assert conflicts(short_flag_meanings({"gptkit sample": planted["gptkit sample"]})) == []


def test_long_only_options_and_renames():
    cmds = commands()
    opts = {where: {n for p in cmd.params for n in [*p.opts, *getattr(p, "secondary_opts", [])]}
            for where, cmd in cmds.items()}
    assert {"--preset", "--config", "--print-config"} <= opts["gptkit train"]
    assert "--temperature" in opts["gptkit sample"] and "-t" not in opts["gptkit sample"]
    assert "--rows" in opts["gptkit inspect"] and "--top-k" not in opts["gptkit inspect"]
    for where in ("gptkit train", "gptkit sample", "gptkit inspect", "gptkit tokenize", "gptkit convert",
                  "gptkit runs"):
        assert "--store" in opts[where] and "--debug" in opts[where], where
        hidden = {n for p in cmds[where].params if getattr(p, "hidden", False) for n in p.opts}
        assert hidden <= {"--checkpoints", "--run-name"}, (where, hidden)
        assert "--checkpoints" in hidden, where


def bogus_store(root: Path, name: str) -> Path:
    """A store holding one run whose checkpoint is not a checkpoint: `gptkit runs` lists it (unreadable)."""
    (root / name / "r").mkdir(parents=True)
    (root / name / "r" / "last.safetensors").write_bytes(b"not a checkpoint")
    return root / name


@pytest.mark.parametrize("args,env,which", [
    (["--store", "A"], {}, "A"),
    (["--checkpoints", "B"], {}, "B"),  # the old name still works
    ([], {"GPTKIT_STORE": "A"}, "A"),
    ([], {"GPTKIT_CHECKPOINTS": "B"}, "B"),  # and the old variable
    ([], {"GPTKIT_STORE": "A", "GPTKIT_CHECKPOINTS": "B"}, "A"),
    (["--checkpoints", "B"], {"GPTKIT_STORE": "A"}, "B"),  # a flag beats an environment variable
    (["--store", "A", "--checkpoints", "B"], {}, "A"),
    ([], {}, "checkpoints"),
])
def test_the_store_is_found_by_its_new_and_old_names(tmp_path, capsys, monkeypatch, args, env, which):
    for name in ("A", "B", "checkpoints"):
        bogus_store(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    for var in ("GPTKIT_STORE", "GPTKIT_CHECKPOINTS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    proc = run_here(capsys, "runs", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == str(Path(which) / "r" / "last.safetensors")


def test_debug_after_the_command_and_from_the_environment(tmp_path, capsys, monkeypatch):
    from gptkit.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        main(["train", "missing.txt", "--debug"])
    monkeypatch.setenv("GPTKIT_DEBUG", "1")
    with pytest.raises(InputError, match="does not exist"):
        main(["train", "missing.txt"])
    monkeypatch.setenv("GPTKIT_DEBUG", "0")
    assert_one_line_error(run_here(capsys, "train", "missing.txt"), "does not exist")
    monkeypatch.delenv("GPTKIT_DEBUG")
    proc = run_cli("inspect", "no-such-run", "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_print_config_is_the_resolved_settings_and_reads_back(tmp_path, capsys):
    from gptkit.config import load_toml, resolve_config, to_dict

    flags = ["--preset", "tiny", "--n-layer", "3", "--optimizer", "muon", "--max-time", "90s", "--no-bias"]
    proc = run_here(capsys, "train", "--print-config", *flags)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert not (tmp_path / "checkpoints").exists()
    mc, tc = resolve_config("tiny", None, dict(n_layer=3, optimizer="muon", max_time="90s", bias=False))
    (tmp_path / "run.toml").write_text(proc.stdout, encoding="utf-8")
    printed = load_toml(tmp_path / "run.toml")
    expected = {**to_dict(tc), **to_dict(mc), "vocab_size": None, "preset": "tiny"}  # vocab_size: the tokenizer's
    assert printed == {k: v for k, v in expected.items() if v is not None}
    assert printed["max_time"] == 90.0 and printed["bias"] is False and printed["beta2"] == 0.99
    again = run_here(capsys, "train", "--print-config", "--config", str(tmp_path / "run.toml"))
    assert again.stdout == proc.stdout  # a config file made by --print-config means the same run
    assert resolve_config(None, tmp_path / "run.toml", {}) == (mc, tc)
    assert_one_line_error(run_here(capsys, "train", "--print-config", "--resume"), "--print-config")


def function_lines(path: Path, name: str) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    return fn.end_lineno - min([fn.lineno, *(d.lineno for d in fn.decorator_list)]) + 1


def test_sample_and_tokenize_commands_stay_short():
    for module, name in (("sample_cmd", "sample_command"), ("tokenize_cmd", "tokenize_command")):
        n = function_lines(ROOT / "gptkit" / "cli" / f"{module}.py", name)
        assert n <= 60, f"{name} is {n} lines; move work into helpers or views"
