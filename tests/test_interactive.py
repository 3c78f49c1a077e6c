"""`gptkit sample` at a terminal, driven through a pseudo-terminal as a person types: each line is a
prompt whose text is the one-shot command's, readline edits and recalls lines, /set changes the next
prompts, Ctrl-C stops a generation and returns to the prompt, Ctrl-D and /quit leave with 0."""

from __future__ import annotations

import codecs
import os
import pty
import re
import select
import signal
import sys
import time

import pytest

from tests.conftest import run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
PROMPT = ">>> "
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")


class Terminal:
    """`python -m gptkit ARGS` with a pty as its controlling terminal (stdin, stdout and stderr)."""

    def __init__(self, *args: str, cwd) -> None:
        env = {**os.environ, "TERM": "dumb", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8", "LANG": "C.UTF-8"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "gptkit", *args], env)
        self.seen, self.decoder = "", codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read_until(self, needle: str, timeout: float = 120) -> str:
        """What the terminal shows up to and including the next `needle` (escapes dropped, \\r\\n as \\n)."""
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no {needle!r} within {timeout} s; the terminal shows:\n{self.seen[-2000:]}")
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the child closed the terminal
                data = b""
            if not data:
                raise AssertionError(f"the terminal closed before {needle!r}:\n{self.seen[-2000:]}")
            self.seen = ANSI.sub("", self.seen + self.decoder.decode(data)).replace("\r\n", "\n")
        end = self.seen.index(needle) + len(needle)
        out, self.seen = self.seen[:end], self.seen[end:]
        return out

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode("utf-8"))

    def ask(self, line: str) -> str:
        """Type a line and Enter; what is printed before the next prompt, without the typed line's echo."""
        self.type(line + "\r")
        out = self.read_until("\n" + PROMPT)
        return out.split("\n", 1)[1][: -len("\n" + PROMPT)]

    def exit_code(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                select.select([self.fd], [], [], 0.2) and os.read(self.fd, 65536)
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        self.kill()
        raise AssertionError("gptkit did not exit")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.fixture
def terminal(trained_run, tmp_path):
    terms = []

    def start(*args: str) -> Terminal:
        t = Terminal("sample", "-c", str(trained_run["run_dir"]), "--threads", "1", "--cpu-split", "off", *args,
                     cwd=tmp_path)
        terms.append(t)
        t.read_until(PROMPT)
        return t

    yield start
    for t in terms:
        t.kill()


def one_shot(trained_run, tmp_path, prompt: str, *args: str) -> str:
    proc = run_cli("sample", "-c", str(trained_run["run_dir"]), "--threads", "1", "--cpu-split", "off", "-p", prompt,
                   "--no-echo", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_each_line_is_a_prompt_edited_and_recalled_with_readline(terminal, trained_run, tmp_path):
    """A terminal with no prompt given opens the prompt loop (no --interactive needed). The text of
    each prompt is the one-shot command's with the same settings; Ctrl-A moves to the start of the
    line and the up arrow recalls an earlier line, which only readline does."""
    t = terminal("--seed", "3", "-n", "40")
    first = t.ask("OMEO:\x01R")  # typed "OMEO:", Ctrl-A, "R": readline makes it "ROMEO:"
    assert first.rstrip("\n") == one_shot(trained_run, tmp_path, "ROMEO:", "--seed", "3", "-n", "40").rstrip("\n")
    assert "temperature = 0" in t.ask("/set temperature 0")
    assert "max-new-tokens = 25" in t.ask("/set max-new-tokens 25")
    greedy = t.ask("\x1b[A\x1b[A\x1b[A")  # up three times: "ROMEO:" again, now greedy and shorter
    assert greedy.rstrip("\n") == one_shot(trained_run, tmp_path, "ROMEO:", "--temperature", "0", "-n", "25").rstrip("\n")
    shown = t.ask("/help")
    assert all(c in shown for c in ("/set", "/show", "/quit", "temperature", "top-k", "seed"))
    assert "temperature=0" in t.ask("/show")
    assert t.ask("/set temperature -1").startswith("error: --temperature")  # checked as the flag is
    assert t.ask("/set colour red").startswith("error: /set knows no setting")
    assert "vocabulary lacks" in t.ask("☃")  # a bad prompt is one error line, and the loop goes on
    assert "temperature=0 " in t.ask("/show")  # the refused values changed nothing
    t.type("/quit\r")
    assert t.exit_code() == 0


def test_ctrl_c_stops_a_generation_and_ctrl_d_leaves(terminal):
    t = terminal("-n", "100000")
    t.type("ROMEO:\r")
    t.read_until("\n", 60)  # the echo of the typed line
    t.read_until(" ", 60)  # and some generated text
    t.type("\x03")  # Ctrl-C: SIGINT from the terminal
    assert "(stopped)" in t.read_until(PROMPT, 60)
    assert t.ask("/set max-new-tokens 5").startswith("max-new-tokens = 5")  # still alive, still listening
    t.type("\x04")  # Ctrl-D at an empty line
    assert t.exit_code() == 0


def test_interactive_conflicts_with_a_given_prompt(trained_run, tmp_path):
    from tests.conftest import assert_one_line_error

    for args in (["-p", "x"], ["--lines"], ["--json"]):
        proc = run_cli("sample", "-c", str(trained_run["run_dir"]), "--interactive", *args, cwd=tmp_path, input="")
        assert_one_line_error(proc, "--interactive", args[0])


def test_piped_lines_run_the_loop_without_a_terminal(trained_run, tmp_path):
    """--interactive reads a pipe too (no readline there): the same texts as the one-shot command."""
    proc = run_cli("sample", "-c", str(trained_run["run_dir"]), "--threads", "1", "--cpu-split", "off",
                   "--interactive", "--seed", "5", "-n", "30", cwd=tmp_path, input="/set top-k 10\nJULIET:\n")
    assert proc.returncode == 0, proc.stderr
    expected = one_shot(trained_run, tmp_path, "JULIET:", "--seed", "5", "-n", "30", "--top-k", "10")
    assert proc.stdout.strip("\n") == expected.strip("\n")  # no prompts printed into a pipe
    assert "top-k = 10" in proc.stderr
