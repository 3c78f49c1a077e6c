"""A fork server for the guide test: `python ARGS` without paying for torch's import each time.

A guide runs some thirty commands, and each fresh interpreter spends about 3 s importing torch (and
torch._dynamo, which torch imports lazily when an optimizer or a meta-device model is built) before
doing under a second of work. The server imports them once; each command is a forked copy of it that
runs ARGS as `python ARGS` would (`-m module` or a script file, the caller's argv, working folder,
environment and stdin/stdout/stderr), so it is still its own process with its own exit code.

    python guide_forkserver.py serve SOCKET        # the server (started with the commands' environment)
    python guide_forkserver.py SOCKET ARGS...      # a command: exits with the command's exit code

The client imports only the standard library, so it starts in milliseconds. Anything other than
`-m module` or a script file (e.g. `-c CODE`) is run by a fresh interpreter instead.
"""

from __future__ import annotations

import json
import os
import socket
import sys

MAX_MESSAGE = 1 << 20


def client(path: str, args: list[str]) -> int:
    """Ask the server to run `python ARGS` here; return its exit code once it has ended."""
    if not args or not (args[0] == "-m" and len(args) > 1 or not args[0].startswith("-")):
        os.execv(sys.executable, [sys.executable, *args])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        message = json.dumps({"args": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(s, [message], [0, 1, 2])
        reply = b""
        while chunk := s.recv(64):  # the command's process holds the connection until it ends
            reply += chunk
    if not reply:
        print("guide_forkserver: the command died without an exit code (killed by a signal?)", file=sys.stderr)
        return 1
    return int(reply)


def serve(path: str) -> None:
    """Import the heavy modules once, then fork one child per request. A child never returns here:
    it ends its process (after atexit handlers and flushing its output) the way `python ARGS` would."""
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        while _reap():
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            run_child(conn, json.loads(message), fds)  # never returns: the child process ends
        for fd in fds:
            os.close(fd)
        conn.close()


def _reap() -> bool:
    try:
        return os.waitpid(-1, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return False


def run_child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    import atexit
    import runpy
    import threading
    import traceback

    import numpy as np

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as a fresh interpreter would choose
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    np.random.seed()  # a fresh interpreter's numpy is seeded from the OS, not copied from its parent
    args = request["args"]
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
    except BaseException:  # noqa: BLE001 (what the interpreter does with an uncaught exception)
        traceback.print_exc()
        code = 1
    # Python's exit, minus tearing down every module (torch's take most of a second): wait for
    # non-daemon threads, run atexit handlers (weakref finalizers, temporary folders), flush output.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            code = code or 120  # what the interpreter returns when it cannot flush its output
    conn.sendall(str(code).encode())
    os._exit(code)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(client(sys.argv[1], sys.argv[2:]))
