"""`gptkit sample` in a pipe: stop strings cut exactly, --lines --json as a batch job, streamed
Korean with no broken characters, stats on stderr only, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest
import torch

from gptkit import checkpoint
from gptkit.config import ModelConfig, to_dict
from tests.conftest import KOREAN, assert_one_line_error, built_once, cli_env, gptkit_argv, run_cli, run_here


@pytest.fixture(scope="session")
def korean_bytes(tmp_path_factory):
    """A byte-level model trained for real on Korean: every Hangul syllable is three tokens."""
    from gptkit.config import resolve_config
    from gptkit.train import train

    def build(store):
        (store / "ko.txt").write_text(KOREAN.read_text(encoding="utf-8")[:400_000], encoding="utf-8")
        mc, tc = resolve_config("tiny", None, dict(tokenizer="byte", n_layer=2, n_embd=96, block_size=48,
                                                   max_iters=250, eval_interval=250, eval_iters=5))
        train(mc, tc, str(store / "ko.txt"), store / "ko", store)

    return built_once(tmp_path_factory, "ko-bytes", build) / "ko"


def sample(run, *args: str, **kw) -> subprocess.CompletedProcess:
    proc = run_cli("sample", "-c", str(run), *args, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_greedy_text_is_the_reference_paths(trained_run, tmp_path):
    """The CLI decodes with the KV cache on 2 threads: its greedy text, past block_size (64), is the
    no-cache reference's (on 1 thread: 150 full forwards, on a core the other test workers share) and
    that of the library's own no-cache generation, token for token."""
    from gptkit import checkpoint
    from gptkit.generate import generate

    run = trained_run["run_dir"]
    args = ("-p", "ROMEO:", "-n", "150", "--temperature", "0", "--no-echo", "--json")
    cached = json.loads(sample(run, *args, "--threads", "2", cwd=tmp_path).stdout)["token_ids"]
    plain = json.loads(sample(run, *args, "--threads", "1", "--no-cache", cwd=tmp_path).stdout)["token_ids"]
    model, tok, _ = checkpoint.load_for_inference(run)
    assert len(cached) == 150 and len(set(cached)) > 5  # greedy text of a small model soon repeats itself
    assert cached == plain == list(generate(model, tok.encode("ROMEO:"), 150, temperature=0, use_cache=False))


def test_stop_string_spanning_tokens_is_cut_exactly(trained_run, tmp_path):
    run = trained_run["run_dir"]
    free = sample(run, "-p", "KING:", "-n", "120", "--seed", "1", "--no-echo", "--json", cwd=tmp_path)
    full = json.loads(free.stdout)["text"]
    stop = full[40:44]  # four characters: four tokens of this char model
    out = sample(run, "-p", "KING:", "-n", "120", "--seed", "1", "--no-echo", "--stop", stop, "--stop", "@@",
                 "-v", cwd=tmp_path)
    expected = full[:full.index(stop)]
    assert out.stdout == expected + ("" if expected.endswith("\n") else "\n")
    assert stop not in out.stdout
    info, stats = out.stderr.strip().splitlines()  # -v: what ran, then the stats, on stderr only
    assert "cpu float32 | compile off" in info  # no compile on CPU unless asked
    assert stats.startswith("stats: prompt 5 tokens") and "tokens/s" in stats and "first token" in stats


def test_lines_json_is_one_valid_object_per_sample_in_order(trained_run, tmp_path):
    prompts = ["ROMEO:", "", "To be, or not", "ROMEO:"]
    args = ("--lines", "--json", "--num-samples", "2", "-n", "30", "--seed", "3", "--top-p", "0.9")
    out = sample(trained_run["run_dir"], *args, input="\n".join(prompts) + "\n", cwd=tmp_path)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["prompt_index"], r["sample"], r["prompt"]) for r in rows] == \
        [(i, j, p) for i, p in enumerate(prompts) for j in range(2)]
    for k, r in enumerate(rows):
        assert r["finish_reason"] == "length" and len(r["token_ids"]) == len(r["logprobs"]) == 30
        assert len(r["text"]) == 30 and all(lp <= 0 for lp in r["logprobs"])
        assert r["seed"] == 3 + k  # every sample of the job its own seed
        assert r["timing"]["tokens_per_second"] > 0
    assert rows[0]["text"] != rows[1]["text"]  # two independent samples of one prompt
    assert rows[0]["text"] != rows[6]["text"]  # and of the same prompt on another line
    again = sample(trained_run["run_dir"], *args, input="\n".join(prompts) + "\n", cwd=tmp_path)
    assert [r["text"] for r in rows] == [json.loads(x)["text"] for x in again.stdout.splitlines()]  # --seed
    alone = sample(trained_run["run_dir"], "-f", "-", "--json", "-n", "30", "--top-p", "0.9", "--seed",
                   str(rows[5]["seed"]), input="To be, or not", cwd=tmp_path)  # `-f -`: stdin
    assert json.loads(alone.stdout)["text"] == rows[5]["text"]  # one sample of the batch, reproduced alone
    plain = sample(trained_run["run_dir"], *(a for a in args if a != "--json"), input="\n".join(prompts) + "\n",
                   cwd=tmp_path)
    lines = plain.stdout.split("\n")
    assert len(lines) == 9 and lines[-1] == ""  # one result per line, newlines inside escaped
    for line, r in zip(lines, rows, strict=False):
        assert line == r["prompt"] + r["text"].replace("\\", "\\\\").replace("\n", "\\n")


def _strict_utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")  # strict: any invalid byte fails
    except UnicodeDecodeError:
        return None


def test_streamed_korean_never_shows_a_broken_character(korean_bytes, tmp_path):
    args = ("-p", "그날 밤", "-n", "90", "--temperature", "0")  # greedy: a model this small still slips at higher temperature
    js = json.loads(sample(korean_bytes, *args, "--json", cwd=tmp_path).stdout)
    raw = bytes(js["token_ids"])  # -n may stop inside a character: its first bytes end the ids, not the text
    whole = next(w for cut in range(4) if (w := _strict_utf8(raw[:len(raw) - cut])) is not None)
    assert js["text"] == whole and sum("가" <= c <= "힣" for c in whole) > 10
    out = sample(korean_bytes, *args, cwd=tmp_path).stdout  # streamed: one byte token at a time
    assert out == "그날 밤" + whole + ("" if whole.endswith("\n") else "\n")


def test_output_streams_before_generation_ends(trained_run, tmp_path):
    env = cli_env()
    cmd = [*gptkit_argv(), "sample", "-c", str(trained_run["run_dir"]), "-p", "ROMEO:",
           "-n", "100000", "--no-echo"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = os.read(proc.stdout.fileno(), 64)  # returns as soon as the first text is flushed
        assert first and proc.poll() is None  # text arrived while the model was still generating
    finally:
        proc.kill()
        proc.wait()


# `--temperature -1` and `-c ghost` are rows of test_hardening.py; these run in this process: the
# refusals are about the flags, not the process (exit codes and closed pipes are tested in a real one)
@pytest.mark.parametrize("args,needle", [
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--min-p", "2"], "--min-p"),
    (["--num-samples", "0"], "--num-samples"),
    (["--stop", ""], "--stop"),
    (["--threads", "0"], "--threads"),
    (["--compile", "--no-cache"], "--no-cache"),
    (["-p", "a", "--prompt-file", "p.txt"], "not both"),
    ([], "no runs"),
])
def test_bad_input_gives_one_line_error(tmp_path, args, needle, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_here(capsys, "sample", *args), needle)


def test_a_failed_write_to_stdout_is_one_line(trained_run, tmp_path):
    """A full disk (`> /dev/full`) or a closed stdout (`>&-`): one error line, not a traceback."""
    cmd = [*gptkit_argv(), "sample", "-c", str(trained_run["run_dir"]), "-p", "ROMEO:", "-n", "5"]
    env = cli_env()  # `>&-` closes the client's stdout: it runs a fresh interpreter (tests/forkserver.py)
    with open("/dev/full", "w") as full:
        proc = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert_one_line_error(proc, "writing the output failed", "no space left")
    assert proc.returncode == 1
    for args in (cmd, [*gptkit_argv(), "--help"]):
        proc = subprocess.run(shlex.join(args) + " >&-", shell=True, capture_output=True, text=True, env=env,
                              cwd=tmp_path)
        assert_one_line_error(proc, "writing the output failed", "stdout is closed")


def test_unicode_whitespace_is_a_valid_prompt(korean_bytes, tmp_path):
    """Only ASCII whitespace used to pass as an empty-looking prompt; an ideographic or no-break space
    (or a file holding only a byte-order mark) was refused as an empty file."""
    from gptkit.cli.sample_cmd import read_prompt_text

    for text in ("\u3000", "\u00a0\n", "\ufeff"):
        (tmp_path / "p.txt").write_text(text, encoding="utf-8")
        assert read_prompt_text(None, tmp_path / "p.txt") == text.removeprefix("\ufeff")
    out = sample(korean_bytes, "-n", "5", "--temperature", "0", "--json", input="\u3000", cwd=tmp_path)
    assert json.loads(out.stdout)["prompt"] == "\u3000" and len(json.loads(out.stdout)["token_ids"]) == 5


def test_prompt_outside_the_char_vocabulary(trained_run, tmp_path):
    proc = run_cli("sample", "-c", str(trained_run["run_dir"]), "-p", "ROMEO: 안녕 ☃", cwd=tmp_path)
    assert_one_line_error(proc, "vocabulary lacks", "'안'", "'☃'")
    bad = tmp_path / "prompts.txt"
    bad.write_text("ROMEO:\nJULIET: ☃\n", encoding="utf-8")
    proc = run_cli("sample", "-c", str(trained_run["run_dir"]), "--prompt-file", str(bad), "--lines", cwd=tmp_path)
    assert_one_line_error(proc, "line 2", "'☃'")
    assert proc.stdout == ""  # checked before anything is generated
    proc = run_cli("sample", "-c", str(trained_run["run_dir"]), "--prompt-file", "missing.txt", cwd=tmp_path)
    assert_one_line_error(proc, "cannot read prompt file", "missing.txt")


def test_bf16_sampling_on_a_cpu(trained_run, tmp_path):
    """`--dtype bfloat16` on a CPU: the weights in bf16, the decode step eager; its greedy text starts
    as the fp32 one does (bf16 rounding may flip a near tie later)."""
    args = ("--prompt", "ROMEO:", "-n", "60", "--temperature", "0", "--json", "-v")
    bf16 = sample(trained_run["run_dir"], *args, "--dtype", "bfloat16", cwd=tmp_path)
    fp32 = sample(trained_run["run_dir"], *args, cwd=tmp_path)
    assert "cpu bfloat16 | compile off" in bf16.stderr and "cpu float32" in fp32.stderr
    text16, text32 = (json.loads(p.stdout)["text"] for p in (bf16, fp32))
    assert len(text16) == 60 and text16[:8] == text32[:8], (text16, text32)


def test_plain_samples_of_one_prompt_are_parted_by_dashes_and_stats_go_to_stderr_alone(trained_run, capsys):
    args = ("sample", "-c", str(trained_run["run_dir"]), "-p", "ROMEO:", "-n", "40", "--seed", "7",
            "--num-samples", "3", "--cpu-split", "off")
    rows = [json.loads(line) for line in run_here(capsys, *args, "--json").stdout.splitlines()]
    assert len(rows) == 3 and len({r["text"] for r in rows}) == 3
    plain = run_here(capsys, *args)
    assert plain.returncode == 0 and plain.stderr == ""
    shown = [("ROMEO:" + r["text"]).removesuffix("\n") for r in rows]  # each ends in exactly one newline
    parts = re.split(r"\n-{10,}\n", plain.stdout.removesuffix("\n"))  # a line of dashes between samples
    assert parts == shown
    stats = run_here(capsys, *args, "--stats")
    assert stats.stdout == plain.stdout
    [line] = stats.stderr.splitlines()  # --stats alone: the stats line, nothing else
    made = sum(len(r["token_ids"]) for r in rows)
    assert line.startswith(f"stats: prompt {rows[0]['prompt_tokens']} tokens | generated {made} tokens (3 samples) | ")


def _the_then_end_of_text(path, position: int) -> None:
    """A 1-layer model with GPT-2's tokenizer whose greedy text is " the" until `position`, then
    end-of-text. The blocks add nothing (zero output projections), so the logits are
    LN(wte[token] + wpe[position]) · wteᵀ, and the position embeddings dominate: 100·(e2 − e3)
    before `position`, 100·(e0 − e1) from it on. Only " the" (10·(e2 − e3)) and end-of-text
    (10·(e0 − e1)) have those dimensions in their embeddings."""
    from gptkit.model import GPT
    from gptkit.tokenizers import build_tokenizer

    tok = build_tokenizer("gpt2")
    [the] = tok.encode(" the")
    cfg = ModelConfig(n_layer=1, n_head=1, n_embd=16, block_size=32, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = GPT(cfg)
    tr = model.transformer
    eye = torch.eye(cfg.n_embd)
    with torch.no_grad():
        for proj in (tr.h[0].attn.c_proj, tr.h[0].mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
        tr.wte.weight[:, :4] = 0
        tr.wte.weight[the] = 10 * (eye[2] - eye[3])
        tr.wte.weight[tok.eot_id] = 10 * (eye[0] - eye[1])
        tr.wpe.weight[:position] = 100 * (eye[2] - eye[3])
        tr.wpe.weight[position:] = 100 * (eye[0] - eye[1])
    checkpoint.save(path, model, {"model_config": to_dict(cfg), "tokenizer": tok.to_dict()})


def test_sampling_stops_at_the_tokenizers_end_of_text(tmp_path, capsys):
    """eos was a pretend id handed to the library; here the CLI must find GPT-2's <|endoftext|> (50256)
    itself. The reference is a plain greedy forward of the same model."""
    path = tmp_path / "eot.safetensors"
    _the_then_end_of_text(path, 8)
    model, tok, _ = checkpoint.load_for_inference(path)
    ids = tok.encode("ROMEO:")  # 3 tokens: positions 2 to 7 predict " the", 8 end-of-text
    with torch.no_grad():
        while ids[-1] != tok.eot_id and len(ids) < 20:
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    new = ids[3:]
    assert tok.eot_id == 50256 and new == tok.encode(" the" * 6) + [tok.eot_id]
    js = json.loads(run_here(capsys, "sample", "-c", str(path), "-p", "ROMEO:", "-n", "20", "--temperature", "0",
                             "--json", "--cpu-split", "off").stdout)
    assert js["finish_reason"] == "eos" and js["token_ids"] == new
    assert js["text"] == tok.decode(new[:-1]) and "<|endoftext|>" not in js["text"]
