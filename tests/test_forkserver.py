"""tests/forkserver.py, which runs the suite's CLI commands as forked copies of an interpreter that has
already imported torch: each must behave as `python ARGS` in a fresh interpreter would, or be one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import FORK, cli_env, cli_python

pytestmark = pytest.mark.skipif(not FORK, reason="the fork server runs on Linux (GPTKIT_TEST_FORK=0 turns it off)")

PROBE = """import atexit, os, sys, time
print(os.getpid(), sys.argv[1:], os.path.basename(os.getcwd()), os.environ.get("PROBE"), flush=True)
atexit.register(print, "atexit ran")
if sys.argv[1] == "raise":
    raise ValueError("boom")
if sys.argv[1] == "interrupt":
    raise KeyboardInterrupt
if sys.argv[1] == "wait":
    print(sys.stdin.readline().strip(), flush=True)
    time.sleep(600)
print(sys.stdin.read().strip())
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE, encoding="utf-8")
    return tmp_path / "probe.py"


def run(python: list[str], *args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*python, *args], input="in", capture_output=True, text=True, env=env or cli_env(),
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("arg", ["0", "3", "raise", "interrupt"])
def test_exit_code_output_and_atexit_are_a_fresh_interpreters(probe, arg):
    fresh, served = run([sys.executable], str(probe), arg), run(cli_python(), str(probe), arg)
    expected = {"raise": 1, "interrupt": -signal.SIGINT}[arg] if arg in ("raise", "interrupt") else int(arg)
    assert served.returncode == fresh.returncode == expected
    assert served.stdout.split(" ", 1)[1] == fresh.stdout.split(" ", 1)[1]  # all but the pid
    assert served.stderr.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]  # ValueError: boom
    assert "atexit ran" in served.stdout


def test_argv_folder_and_environment_are_the_callers(probe, tmp_path):
    (tmp_path / "sub").mkdir()
    out = run(cli_python(), str(probe), "0", env=cli_env(PROBE="yes"), cwd=tmp_path / "sub").stdout
    assert out.split(" ", 1)[1] == "['0'] sub yes\nin\natexit ran\n"


def test_a_served_command_is_its_own_process_and_a_changed_startup_variable_gets_a_fresh_one(probe):
    served = subprocess.Popen([*cli_python(), str(probe), "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              text=True, env=cli_env())
    assert int(served.communicate()[0].split()[0]) != served.pid  # a forked copy: another pid
    fresh = subprocess.Popen([*cli_python(), str(probe), "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             text=True, env=cli_env(PYTHONHASHSEED="7"))
    assert int(fresh.communicate()[0].split()[0]) == fresh.pid  # the client exec'd a fresh interpreter


def _gone(pid: int) -> bool:
    for _ in range(500):  # the server reaps a command within 20 ms of its end
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("how", ["terminate", "interrupt", "kill the client"])
def test_signals_reach_the_command_and_a_killed_client_takes_it_along(probe, how):
    proc = subprocess.Popen([*cli_python(), str(probe), "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())
    pid = int(proc.stdout.readline().split()[0])
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "go\n"  # it reads the caller's stdin, and is now asleep
    {"terminate": proc.terminate, "interrupt": lambda: proc.send_signal(signal.SIGINT),
     "kill the client": proc.kill}[how]()
    proc.communicate(timeout=60)
    assert proc.returncode == {"terminate": -signal.SIGTERM, "interrupt": -signal.SIGINT, "kill the client": -signal.SIGKILL}[how]
    assert _gone(pid)
