"""A fork server for the suite: `python ARGS` without paying for torch's import each time.

A fresh interpreter spends 2-3 s importing torch (and torch._dynamo, which torch imports lazily when
an optimizer or a meta-device model is built) before a CLI command does under a second of work, and
the suite runs some hundred commands. The server imports them once; each command is a forked copy of
it that runs ARGS as `python ARGS` would (`-m module` or a script file, with the caller's argv,
working folder, environment and stdin/stdout/stderr), so it is still its own process, with its own
pid, exit code, signals and output.

    python forkserver.py serve SOCKET        # the server (started with the commands' environment)
    python forkserver.py SOCKET ARGS...      # a command: ends as the command ends

The client imports only the standard library, so it starts in milliseconds. It forwards SIGINT,
SIGTERM, SIGHUP and SIGQUIT to the command, and ends with the command's exit code, or by the signal
that ended it; if the client is killed, the server kills the command. It runs a fresh interpreter
instead (exec) for anything other than `-m module` or a script file (e.g. `-c CODE`), when stdin,
stdout or stderr is closed, and when the caller's environment differs from the server's in a
variable read only at start-up (PYTHON*, OMP_*, LANG, LC_*, ...): a forked copy could not honour it.

conftest.py's cli_python() starts one server per xdist worker, on Linux only (a fork of a process that
has loaded torch is not safe on macOS); GPTKIT_TEST_FORK=0 runs every command in a fresh interpreter.
A test about the interpreter itself (what it imports, its peak memory, a process killed at a chosen
moment, a terminal, dropped privileges) runs sys.executable directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

MAX_MESSAGE = 1 << 20
# read by the interpreter, the C runtime or torch's import: a forked copy keeps the server's. (Not
# TORCH*: torch sets some itself, e.g. TORCHINDUCTOR_CACHE_DIR as torch._dynamo is imported, and reads
# them when the feature they configure is used.)
STARTUP = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "LD_", "MALLOC_", "CUDA", "LANG", "LC_")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def startup_env(env) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP)}


def servable(path: str, args: list[str]) -> bool:
    """Whether a forked copy of the server runs `python ARGS` as a fresh interpreter would."""
    if not args or not (args[0] == "-m" and len(args) > 1 or not args[0].startswith("-")):
        return False
    try:  # a closed stdin, stdout or stderr (`>&-`) is the command's to find, not something to send
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return False
    with open(path + ".env", encoding="utf-8") as f:
        return json.load(f) == startup_env(os.environ)


def client(path: str, args: list[str]) -> int:
    """Have the server run `python ARGS` here; end as it ended (exit code, or the signal that killed it)."""
    if not servable(path, args):
        os.execv(sys.executable, [sys.executable, *args])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    message = json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode() + b"\n"
    socket.send_fds(s, [message], [0, 1, 2])
    reply = s.makefile("rb")
    pid = int(reply.readline())

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    status = reply.readline()  # the server writes it once the command has ended
    if not status:
        print("forkserver: the server went away before the command ended", file=sys.stderr)
        return 1
    code = int(status)
    if code < 0:  # killed by a signal: so is this process, so its parent sees the same
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def serve(path: str) -> None:
    """Import the heavy modules once, then fork one child per request; tell each client its child's
    pid, then how the child ended. A child never returns here: it ends its process (after atexit
    handlers and flushing its output) the way `python ARGS` would."""
    import select

    with open(path + ".env", "w", encoding="utf-8") as f:  # before torch's import sets any
        json.dump(startup_env(os.environ), f)
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    running: dict[socket.socket, int] = {}  # a client's connection -> its command's pid
    while True:
        ready, _, _ = select.select([listener, *running], [], [], 0.02 if running else None)
        for conn, pid in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                try:
                    conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
                except OSError:
                    pass
                conn.close()
                del running[conn]
            elif conn in ready:  # the client sends nothing after its request: this is its end
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if listener in ready:
            conn, _ = listener.accept()
            message, fds = _request(conn)
            if message is None:  # the client died before it asked
                for fd in fds:
                    os.close(fd)
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in running:
                    other.close()
                conn.close()
                run_child(json.loads(message), fds)  # never returns: the child process ends
            for fd in fds:
                os.close(fd)
            conn.sendall(b"%d\n" % pid)
            running[conn] = pid


def _request(conn: socket.socket) -> tuple[bytes | None, list[int]]:
    message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
    while not message.endswith(b"\n"):
        chunk = conn.recv(MAX_MESSAGE)
        if not chunk:
            return None, fds
        message += chunk
    return message, fds


def client_argv(path: str) -> list[str]:
    """The argv prefix that runs `python ARGS` through the server on socket `path`."""
    return [sys.executable, os.path.abspath(__file__), path]


def start(path: str, env: dict[str, str]):
    """The server on socket `path`, started with `env` in a session of its own (so that killing its
    process group also kills any command still running), once it is ready."""
    import subprocess

    server = subprocess.Popen([sys.executable, __file__, "serve", path], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    if server.stdout.readline() != "ready\n":
        server.kill()
        raise RuntimeError("the fork server did not start")
    return server


def stop(server) -> None:
    """The server and every command it still runs, killed."""
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


def run_child(request: dict, fds: list[int]) -> None:
    import atexit
    import random
    import runpy
    import threading
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as a fresh interpreter would choose
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    random.seed()  # a fresh interpreter's generators are seeded from the OS, not copied from a parent
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    args = request["args"]
    interrupted = False
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:  # noqa: BLE001 (what the interpreter does with an uncaught exception)
        traceback.print_exc()
        code, interrupted = 1, isinstance(e, KeyboardInterrupt)
    # Python's exit, minus tearing down every module (torch's take most of a second): wait for
    # non-daemon threads, run atexit handlers (weakref finalizers, temporary folders), flush output.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            code = code or 120  # what the interpreter returns when it cannot flush its output
    if interrupted:  # an uncaught Ctrl-C ends a fresh interpreter by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(client(sys.argv[1], sys.argv[2:]))
