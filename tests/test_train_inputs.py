"""`gptkit train` on what people have, end to end: memory that does not grow with the text, run names
that stay inside the store, one writer per run (two real processes), --overwrite, a URL (downloaded
once, then used offline; a cut download never cached), a dataset folder of another tokenizer than
--init-from's, and two processes that act as two nodes with stores of their own, each building its
dataset from a folder."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager

import numpy as np
import pytest

from gptkit import checkpoint
from gptkit.cli.train_cmd import check_run_name, run_name_for
from gptkit.errors import UsageError
from gptkit.fsio import RUN_LOCK, lock_holder
from tests.conftest import ENGLISH, KOREAN, ROOT, SHAKESPEARE, assert_one_line_error, cli_env, gptkit_argv, run_here

TINY = ["--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-iters", "1", "--device", "cpu", "-q"]
ONE_BATCH = ["--grad-accum", "1", "--dtype", "float32"]  # a step of one micro-batch, no bf16 timing


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


PEAK = ("import resource, subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'gptkit', *sys.argv[1:]], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")


def test_peak_memory_of_train_does_not_grow_with_the_text(tmp_path):
    """`gptkit train` on 50 MB of text peaks within 150 MB of the same command on 1 MB. The text is the
    shipped corpora repeated, each time after a line with an emoji, as real text has: Python keeps such a
    string at 4 bytes per character, so reading the text whole (as train did) cost about 200 MB more here."""
    block = "🙂\n".encode() + SHAKESPEARE.read_bytes() + KOREAN.read_bytes() + ENGLISH.read_bytes()
    for name, mb in (("small", 1), ("big", 50)):
        with open(tmp_path / f"{name}.txt", "wb") as f:
            for _ in range(max(1, round(mb * 1e6 / len(block)))):
                f.write(block)
    assert (tmp_path / "big.txt").stat().st_size > 49e6
    runs = {name: subprocess.Popen(  # each measured from a parent of its own (RUSAGE_CHILDREN), side by side
        [sys.executable, "-c", PEAK, "train", f"{name}.txt", "--checkpoints", "store", "--tokenizer", "byte",
         "--max-iters", "1", *TINY], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for name in ("small", "big")}
    peak = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        peak[name] = int(out)
    assert peak["big"] - peak["small"] < 150, peak
    meta = json.loads((tmp_path / "store" / "big" / "data" / "meta.json").read_text())
    assert meta["train_tokens"] + meta["val_tokens"] == (tmp_path / "big.txt").stat().st_size


@pytest.mark.parametrize("name", ["novel", "novel-2", "a.b_c", "소설", "x" * 100, "2024.01.31", "-x", "a..b"])
def test_run_names_that_are_allowed(name):
    assert check_run_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../escape", "a/b", "/abs", "a\\b", ".hidden", "x" * 101, "a b",
                                  "a:b", "run\n"])
def test_run_names_that_would_leave_the_store_nest_or_hide_are_one_line(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:5000], encoding="utf-8")
    proc = run_here(capsys, "train", "t.txt", "--checkpoints", "store", "--run", name, *TINY)
    assert_one_line_error(proc, "is not a run name", "letters, digits, '.', '_' and '-'", "at most 100")
    assert proc.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    with pytest.raises(UsageError):
        check_run_name(name)


def test_run_names_made_from_inputs():
    assert [run_name_for(d) for d in ("novel.txt", "texts/", "a/b/corpus.jsonl.gz", "https://x.org/y/input.txt?z=1",
                                      "-", None, ".", "한국 소설.md")] == [
        "novel", "texts", "corpus", "input", "stdin", "builtin", "run", "한국-소설"]
    assert len(run_name_for("y" * 300 + ".txt")) == 100


HOLD = ("import sys, time\nfrom contextlib import ExitStack\nfrom pathlib import Path\nfrom gptkit.fsio import run_lock\n"
        "with ExitStack() as held:\n    for run in sys.argv[1:]:\n        held.enter_context(run_lock(Path(run)))\n"
        "    print('locked', flush=True)\n    time.sleep(600)\n")


def test_one_training_writes_a_run_and_a_killed_ones_lock_is_taken_over(tmp_path, capsys, monkeypatch):
    from gptkit.config import resolve_config
    from gptkit.train import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    store, run = tmp_path / "store", tmp_path / "store" / "r"
    held = []  # while it trains, this process holds the run's lock; afterwards the lock file is gone
    mc, tc = resolve_config("tiny", None, dict(n_layer=1, n_head=1, n_embd=16, block_size=16, batch_size=2,
                                               max_iters=2, eval_iters=1, device="cpu"))
    train(mc, tc, "r.txt", run, store, on_event=lambda e: held.append(lock_holder(run / RUN_LOCK)))
    assert set(held) == {f"process {os.getpid()} on {socket.gethostname()}"} and not (run / RUN_LOCK).exists()
    before = (run / checkpoint.LAST).read_bytes()

    (store / "s").mkdir()  # a run folder with no checkpoint yet, being written by the holder too
    (tmp_path / "s.txt").write_bytes((tmp_path / "r.txt").read_bytes())
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(store / "s")], stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline() == "locked\n"
        for extra in (["--run", "r", "--resume", "--max-iters", "4"], ["--run", "r", "--overwrite"]):
            proc = run_here(capsys, "train", "r.txt", "--checkpoints", "store", *extra, *TINY)
            assert_one_line_error(proc, f"run 'r' is being written by process {holder.pid} on", "choose another --run")
            assert proc.returncode == 4
        assert (run / checkpoint.LAST).read_bytes() == before  # --overwrite deleted nothing
        assert run_here(capsys, "train", "s.txt", "--checkpoints", "store", "--max-iters", "1", *TINY).returncode == 0
        assert (store / "s-2" / checkpoint.LAST).is_file()  # a run named from its input goes to the next free name
        assert sorted(p.name for p in (store / "s").iterdir()) == [RUN_LOCK]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (run / RUN_LOCK).is_file()  # the killed holder's lock file stays, but no process holds it
    proc = run_here(capsys, "train", "r.txt", "--checkpoints", "store", "--run", "r", "--resume", "--max-iters", "4",
                    *TINY)
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.read_info(run / checkpoint.LAST).state["step"] == 4 and not (run / RUN_LOCK).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_stores_of_their_own_each_build_from_a_folder_and_train(tmp_path):
    """Two processes with torchrun's variables as two nodes would have them (each its node's local rank
    0, each its own store): both build the dataset from the folder, then train together with gloo."""
    texts = tmp_path / "texts"
    (texts / "more").mkdir(parents=True)
    (texts / "plays.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    (texts / "more" / "novel.txt").write_text(ENGLISH.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**cli_env(), "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
               "GROUP_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(
            [*gptkit_argv(), "train", str(texts), "--checkpoints", str(tmp_path / f"node{rank}"),
             "--run-name", "r", "--max-iters", "3", "--eval-interval", "3", *TINY],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    node0, node1 = tmp_path / "node0" / "r", tmp_path / "node1" / "r"
    for name in ("train.bin", "val.bin"):  # each node built its own copy, and they are the same
        assert (node0 / "data" / name).read_bytes() == (node1 / "data" / name).read_bytes()
    meta = json.loads((node1 / "data" / "meta.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == [str(texts / "plays.txt"), str(texts / "more" / "novel.txt")]
    assert checkpoint.read_info(node0 / checkpoint.LAST).state["step"] == 3  # rank 0 alone writes checkpoints
    assert sorted(p.name for p in node1.iterdir()) == ["data"]
    start = json.loads((node0 / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2


def test_overwrite_replaces_the_run_with_another_shape_and_keeps_its_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    run = tmp_path / "store" / "r"
    first = run_here(capsys, "train", "r.txt", "--store", "store", "--run", "r", "--max-iters", "2", *TINY, *ONE_BATCH)
    assert first.returncode == 0, first.stderr
    built = (run / "data" / "train.bin").stat().st_mtime_ns
    wider = list(TINY)
    wider[wider.index("--n-embd") + 1] = "32"
    again = run_here(capsys, "train", "r.txt", "--store", "store", "--run", "r", "--overwrite", "--max-iters", "1",
                     *wider, *ONE_BATCH)
    assert again.returncode == 0, again.stderr
    for name in (checkpoint.LAST, checkpoint.BEST):  # a new run of the new shape, from step 0
        info = checkpoint.read_info(run / name)
        assert info.model_config.n_embd == 32 and info.state["step"] == 1, name
    events = [json.loads(line)["event"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events.count("start") == 1  # the old run's log went with its checkpoints
    assert (run / "data" / "train.bin").stat().st_mtime_ns == built  # the same text: its dataset reused


class _Serve(http.server.BaseHTTPRequestHandler):
    """GET /<anything>: `body`; under /cut/ its Content-Length promises it all and the connection
    closes halfway, as a dropped download does."""

    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[:len(self.body) // 2] if self.path.startswith("/cut/") else self.body)
        self.close_connection = True

    def log_message(self, *args) -> None:  # not on the test's stderr
        pass


@contextmanager
def serving(body: bytes):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Serve,), {"body": body}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_training_from_a_url_downloads_it_once_and_trains_on_it_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = SHAKESPEARE.read_bytes()[:20_000]
    train = ("train", "--store", "store", "--max-iters", "1", *TINY, *ONE_BATCH)
    with serving(text) as url:
        first = run_here(capsys, train[0], f"{url}/plays/input.txt", *train[1:])
        cut = run_here(capsys, train[0], f"{url}/cut/input.txt", *train[1:])
    assert first.returncode == 0, first.stderr
    assert_one_line_error(cut, "cannot download", "closed after 10,000 of 20,000 bytes")
    [cached] = (tmp_path / "store" / ".cache" / "downloads").iterdir()  # nothing of the cut one, no temporary
    assert cached.read_bytes() == text
    offline = run_here(capsys, train[0], f"{url}/plays/input.txt", *train[1:])  # the server is gone
    assert offline.returncode == 0, offline.stderr
    runs = tmp_path / "store" / "input", tmp_path / "store" / "input-2"
    assert [checkpoint.read_info(r / checkpoint.LAST).state["step"] for r in runs] == [1, 1]
    chars = sorted(set(text.decode()))  # the char tokenizer of the text served: its characters in order
    for r in runs:
        ids = np.concatenate([np.fromfile(r / "data" / f"{side}.bin", dtype=np.uint16) for side in ("train", "val")])
        assert "".join(chars[i] for i in ids).encode() == text


def test_a_dataset_of_another_tokenizer_is_refused_and_tokenize_checkpoint_builds_the_right_one(tmp_path, capsys,
                                                                                                monkeypatch):
    """`train DIR --init-from RUN` needs DIR in RUN's tokenizer; the one-line refusal names the command
    that builds it, and that command's dataset trains."""
    monkeypatch.chdir(tmp_path)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    (tmp_path / "parent.txt").write_text(text[:20_000], encoding="utf-8")
    (tmp_path / "t.txt").write_text(text[:10_000], encoding="utf-8")  # in the parent's characters
    parent = "store/parent"
    assert run_here(capsys, "train", "parent.txt", "--store", "store", "--max-iters", "1", *TINY,
                    *ONE_BATCH).returncode == 0
    train = ("--store", "store", "--init-from", parent, "--max-iters", "1", "--batch-size", "2", "--eval-iters", "1",
             "--device", "cpu", "-q", *ONE_BATCH)
    assert run_here(capsys, "tokenize", "t.txt", "--out", "bytes", "-t", "byte", "-q").returncode == 0
    proc = run_here(capsys, "train", "bytes", *train)
    assert_one_line_error(proc, "'bytes' was built with another tokenizer than the checkpoint's",
                          "gptkit tokenize --checkpoint")
    assert proc.returncode == 2 and not (tmp_path / "store" / "bytes").exists()
    assert run_here(capsys, "tokenize", "t.txt", "--out", "same", "--checkpoint", parent, "-q").returncode == 0
    proc = run_here(capsys, "train", "same", "--run", "ft", *train)
    assert proc.returncode == 0, proc.stderr
    tokenizer = checkpoint.read_info(tmp_path / parent / checkpoint.LAST).meta["tokenizer"]
    assert json.loads((tmp_path / "same" / "meta.json").read_text())["tokenizer"] == tokenizer
    info = checkpoint.read_info(tmp_path / "store" / "ft" / checkpoint.LAST)
    assert info.meta["tokenizer"] == tokenizer and info.state["step"] == 1
