"""The learner's guides (docs/guide.md, docs/guide.ko.md) run for real, so they cannot drift from the code.

A guide is read as steps in reading order: a ```sh block is a script (no output shown); a ```console
block is `$ command` lines, each followed by the output a reader sees; a ```python block that starts
with `# save as NAME.py` is a file the reader saves (a later `$ python NAME.py` runs it). One guide's
steps run in order in one temporary folder, so the model trained early on is the one later sections
sample and inspect. `gptkit` and `python` in a command are this interpreter (`python -m gptkit`), so
the package under test is what runs.

Checked: exit code 0, and every output line the guide shows appears in the real output (stdout and
stderr together, as at a terminal; `…` stands for anything, a line of just `…` for skipped lines).
An HTML comment right before a block loosens that where training decides the numbers:
`<!-- test: numbers vary -->` makes every number a wildcard (and any run of spaces match any other);
`<!-- test: expect "A" "B" -->` checks only those strings, which must be in the shown output too.
`<!-- test: skip: REASON -->` skips a block (only the one-time install, which this test runs inside).

GPTKIT_GUIDE_FAST (default 1) shortens the work so the suite stays fast: `--max-iters N` becomes
`--max-iters 4`, `gptkit train` (and `python no_mask.py`, which runs it in-process) gets
`--eval-iters 2 --dtype float32` (no timing of bf16 against fp32 for four steps), `--max-positions N`
(the --neighbors scan) becomes `--max-positions 1000` and `--eval N` (the --neighbors evaluation)
`--eval 20`; the built-in corpus, which `gptkit train` would make in the run folder's store, is
copied there from the one `inspect --neighbors` makes (the same file, made once per machine, not
twice per run); and, on Linux, `gptkit`/`python` run as forked copies of one interpreter that has already
imported torch (forkserver.py: each is still its own process, with the command's argv, folder,
environment, stdio and exit code), because importing torch took most of a fresh command's time.
GPTKIT_GUIDE_FAST=0 runs the guides exactly as written, each command in a fresh interpreter, which
is how their shown outputs were made.

Pictures: a guide shows `![...](img/LANG/NAME.svg)`, drawn by one of its own steps as NAME.svg in the
run folder. Each run checks that every picture was drawn and is an SVG; a GPTKIT_GUIDE_FAST=0 run
also copies them into docs/img/LANG/, so the checked-in pictures come from the run whose outputs the
guide shows.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import forkserver
from tests.conftest import FORK, ROOT, seed_builtin_corpus

GUIDES = {"en": ROOT / "docs" / "guide.md", "ko": ROOT / "docs" / "guide.ko.md"}
FAST = os.environ.get("GPTKIT_GUIDE_FAST", "1") != "0"
FAST_ITERS = 4
FAST_EVAL_ITERS = 2
FAST_POSITIONS = 1000
FAST_EVAL = 20
TRAINS = re.compile(r"\b(gptkit train|python no_mask\.py)\b")  # the guides' no_mask.py runs `gptkit train`
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->$")
NUMBER = re.compile(r"[-+]?\d[\d,.:]*")
PICTURE = re.compile(r"!\[[^\]]*\]\(img/(\w+)/([\w.-]+\.svg)\)")


@dataclass
class Step:
    kind: str  # "sh" | "console" | "file"
    line: int  # where the block starts in the guide (1-based), for failure messages
    text: str  # the script, the command, or the file's content
    shown: list[str] = field(default_factory=list)  # console: the output lines the guide shows
    mode: str = "exact"  # "exact" | "numbers vary" | "expect"
    expect: list[str] = field(default_factory=list)
    name: str = ""  # file: its name


def command_complete(text: str) -> bool:
    """True when `text` is a whole shell command (no open quote, no trailing backslash)."""
    try:
        shlex.split(text)
    except ValueError:
        return False
    return True


def console_steps(lines: list[str], start: int, mode: str, expect: list[str]) -> list[Step]:
    """`$ cmd` lines (continued while a quote is open) and the output lines after each."""
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if not steps:
                raise ValueError(f"line {start + i}: a console block must start with `$ `")
            steps[-1].shown.append(lines[i])
            i += 1
            continue
        cmd, first = lines[i][2:], i
        while not command_complete(cmd) and i + 1 < len(lines):
            i += 1
            cmd += "\n" + lines[i]
        steps.append(Step("console", start + first, cmd, mode=mode, expect=expect))
        i += 1
    return steps


def parse_mark(comment: str | None) -> tuple[str, list[str]]:
    if comment is None:
        return "exact", []
    if comment == "numbers vary":
        return "numbers vary", []
    if comment.startswith("expect "):
        return "expect", re.findall(r'"([^"]+)"', comment)
    if comment.startswith("skip:"):
        return "skip", []
    raise ValueError(f"unknown test mark {comment!r}")


def parse_guide(text: str) -> list[Step]:
    """The steps of a guide, in reading order."""
    lines = text.splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        kind, start = m.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = lines[i + 1:end]
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.match(before)
        mode, expect = parse_mark(mark.group(1) if mark else None)
        where = start + 2  # the block's first body line, 1-based
        if mode == "skip":
            pass
        elif kind == "console":
            steps += console_steps(body, where, mode, expect)
        elif kind == "sh":
            steps.append(Step("sh", where, "\n".join(body) + "\n"))
        elif kind == "python" and body and body[0].startswith("# save as "):
            steps.append(Step("file", where, "\n".join(body) + "\n", name=body[0][len("# save as "):].strip()))
        elif kind in ("", "text", "python", "toml", "json"):
            if any(ln.startswith("$ ") for ln in body):
                raise ValueError(f"line {where}: commands belong in a console block, not ```{kind}")
        else:
            raise ValueError(f"line {where}: ```{kind} blocks are not run; use console or sh")
        i = end + 1
    return steps


def shorten(cmd: str) -> str:
    """Fast mode: a few optimizer steps, a cheap validation estimate, a short neighbour scan and evaluation."""
    cmd = re.sub(r"--max-iters \d+", f"--max-iters {FAST_ITERS}", cmd)
    cmd = re.sub(r"--max-positions \d+", f"--max-positions {FAST_POSITIONS}", cmd)
    cmd = re.sub(r"--eval \d+", f"--eval {FAST_EVAL}", cmd)
    return TRAINS.sub(rf"\1 --eval-iters {FAST_EVAL_ITERS} --dtype float32", cmd)


def line_pattern(shown: str, mode: str) -> re.Pattern[str]:
    """A shown line as a regex: `…` matches anything; with numbers varying, any number and spacing."""
    parts = []
    for piece in re.split(r"(…)", shown.strip()):
        if piece == "…":
            parts.append(".*")
        elif mode == "numbers vary":
            for tok in re.split(rf"({NUMBER.pattern}|\s+)", piece):
                if not tok:
                    continue
                parts.append(r"[-+]?\d[\d,.:]*" if NUMBER.fullmatch(tok) else r"\s+" if tok.isspace()
                             else re.escape(tok))
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts) + ("" if mode == "numbers vary" else r"\Z"))


def missing_lines(step: Step, output: str) -> list[str]:
    """The shown lines (or expected strings) the real output lacks."""
    if step.mode == "expect":
        return [s for s in step.expect if s not in output]
    actual = [ln.strip() for ln in output.splitlines()]
    wanted = [ln for ln in step.shown if ln.strip() and ln.strip() != "…"]
    return [ln for ln in wanted if not any(line_pattern(ln, step.mode).match(a) for a in actual)]


def step_env() -> dict[str, str]:
    """The environment a guide's commands (and the fork server) run in."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "80", "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1",
           "OMP_NUM_THREADS": "1"}  # tiny models: two threads on a busy 2-core machine run 10x slower
    env.pop("GPTKIT_CHECKPOINTS", None)  # the guide's store is ./checkpoints
    env.pop("GPTKIT_STORE", None)
    return env


def prelude(python: list[str]) -> str:
    """`gptkit` and `python` as shell functions running `python` (this interpreter, or the fork server)."""
    py = " ".join(shlex.quote(a) for a in python)
    return f'gptkit() {{ {py} -m gptkit "$@"; }}\npython() {{ {py} "$@"; }}\nset -o pipefail\n'


@pytest.fixture(scope="module")
def python_cmd(tmp_path_factory):
    """How a step runs `python`: through a fork server in fast mode where conftest's FORK allows one
    (Linux; GPTKIT_TEST_FORK=0 turns it off), else a fresh interpreter each time."""
    if not (FAST and FORK):
        yield [sys.executable]
        return
    sock = tmp_path_factory.mktemp("forkserver") / "s"
    server = forkserver.start(str(sock), step_env())
    try:
        yield forkserver.client_argv(str(sock))
    finally:
        forkserver.stop(server)


def run_step(step: Step, cwd: Path, python: list[str]) -> None:
    """Run one step in `cwd` as a reader would; fail with the guide's line number and the output."""
    if step.kind == "file":
        (cwd / step.name).write_text(step.text, encoding="utf-8")
        return
    script = shorten(step.text) if FAST else step.text
    head = prelude(python) + ("set -eu\n" if step.kind == "sh" else "")
    proc = subprocess.run(["bash", "-c", head + script], cwd=cwd, env=step_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    where = f"line {step.line}: {step.text.splitlines()[0][:100]}"
    assert proc.returncode == 0, f"{where}\nexit code {proc.returncode}\n{proc.stdout[-3000:]}"
    missing = missing_lines(step, proc.stdout)
    assert not missing, f"{where}\nthe guide shows lines the real output lacks: {missing}\n--- real output:\n" \
        f"{proc.stdout[-3000:]}"


def check_pictures(text: str, lang: str, run_dir: Path, copy: bool) -> None:
    """Every picture the guide shows was drawn in the run folder, as an SVG; with `copy`, put it in docs/img."""
    for where, name in PICTURE.findall(text):
        assert where == lang, f"{GUIDES[lang].name} shows img/{where}/{name}; its pictures live in img/{lang}/"
        drawn = run_dir / name
        assert drawn.is_file(), f"{GUIDES[lang].name} shows img/{lang}/{name}, but no step drew {name}"
        assert ET.parse(drawn).getroot().tag.endswith("svg"), name
        if copy:
            target = ROOT / "docs" / "img" / lang / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(drawn, target)
        assert (ROOT / "docs" / "img" / lang / name).is_file(), f"docs/img/{lang}/{name} is not checked in"


def warm_builtin_corpus(run_dir: Path) -> None:
    """Put the built-in corpus where `gptkit train` in `run_dir` looks for it (./checkpoints/.cache)."""
    from gptkit.data.sources import builtin_corpus

    seed_builtin_corpus(builtin_corpus(), run_dir / "checkpoints")  # the machine-wide copy: inspect --neighbors reads it


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_guide_runs_as_written(lang, tmp_path, python_cmd):
    text = GUIDES[lang].read_text(encoding="utf-8")
    if FAST and re.search(r"^\$ gptkit train --", text, re.M):  # a guide that trains on the built-in corpus
        warm_builtin_corpus(tmp_path)
    for step in parse_guide(text):
        run_step(step, tmp_path, python_cmd)
    check_pictures(text, lang, tmp_path, copy=not FAST)


PROBE = """import atexit, os, sys
print(sys.argv[1:], os.path.basename(os.getcwd()), os.environ.get("PROBE"), sys.stdin.read().strip())
atexit.register(print, "atexit ran")
if sys.argv[1] == "raise":
    raise ValueError("boom")
sys.exit(int(sys.argv[1]))
"""


def test_commands_run_through_the_fork_server_as_through_python(python_cmd, tmp_path):
    """Same output, exit code and error as a fresh interpreter: argv, folder, environment, stdin, atexit."""
    if python_cmd == [sys.executable]:
        pytest.skip("the guides run without the fork server here (conftest's FORK, or GPTKIT_GUIDE_FAST=0)")
    (tmp_path / "probe.py").write_text(PROBE, encoding="utf-8")
    script = 'echo in | PROBE=yes python probe.py "$1"; echo "exit $?"; python -m gptkit --version'
    for arg in ("0", "3", "raise"):
        fresh, served = [subprocess.run(["bash", "-c", prelude(py) + script, "bash", arg], cwd=tmp_path,
                                        env=step_env(), capture_output=True, text=True)
                         for py in ([sys.executable], python_cmd)]
        assert served.stdout == fresh.stdout, arg
        assert f"['{arg}'] {tmp_path.name} yes in\natexit ran\nexit {1 if arg == 'raise' else arg}\ngptkit " \
            in served.stdout
        assert served.stderr.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]  # ValueError: boom


CONCEPTS = ["token", "embedding", "softmax", "context vector", "query", "key", "value", "√d", "causal mask",
            "teacher forcing", "multi-head", "head", "FFN", "layer norm", "residual", "position", "RoPE", "logit",
            "logit lens", "--neighbors"]
HANGUL = re.compile(r"[가-힣]")


def commands(steps: list[Step]) -> list[str]:
    return [s.text for s in steps if s.kind == "console"]


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_guide_covers_the_transformer_from_six_tokens_to_neighbours(lang):
    text = GUIDES[lang].read_text(encoding="utf-8")
    missing = [c for c in CONCEPTS if c.lower() not in text.lower()]
    assert not missing, f"{GUIDES[lang].name} never mentions {missing}"
    steps = parse_guide(text)
    cmds = commands(steps)
    first = next(s for s in steps if s.kind == "console" and s.text.startswith("python six_tokens.py"))
    assert first.mode == "exact" and any("[0.4421, 0.5931, 0.5790]" in ln for ln in first.shown)  # "Your"
    assert any("[0.4419, 0.6515, 0.5683]" in ln for ln in first.shown)  # "journey", the book's running query
    six = next(s for s in steps if s.kind == "file")  # the first script: the six tokens, through gptkit's own function
    assert "from gptkit.model import manual_attention" in six.text and "manual_attention(x, x, x" in six.text
    assert "--neighbors" in cmds[-1] and cmds[-1].startswith("gptkit inspect")
    # the neighbour section reads each block's followers (--json) and the many-position table with its baselines
    assert any("--neighbors" in c and "--json" in c for c in cmds)
    assert any(re.search(r"--neighbors --eval \d+", c) for c in cmds)
    for sub in ("tokenize", "train", "sample", "inspect"):
        assert any(c.startswith(f"gptkit {sub}") for c in cmds), f"no `gptkit {sub}` in {GUIDES[lang].name}"
    assert any("--pos-encoding rope" in c for c in cmds) and any("--head" in c for c in cmds)
    assert text.count("<!-- test: skip:") == 1  # only the install, which the test suite runs inside
    for step in steps:  # an expectation must be something the reader is shown
        for want in step.expect:
            assert want in "\n".join(step.shown), (step.line, want)


def test_korean_guide_is_korean_end_to_end():
    steps = parse_guide(GUIDES["ko"].read_text(encoding="utf-8"))
    cmds = commands(steps)
    sentence = [c for c in cmds if c.startswith('gptkit tokenize "안녕하세요 저는 ChatGPT입니다"')]
    assert {re.search(r"--tokenizer (\w+)", c).group(1) for c in sentence} >= {"char", "byte", "gpt2", "cl100k_base",
                                                                              "bpe"}
    trains = [c for c in cmds if c.startswith("gptkit train")]
    assert trains and all(HANGUL.search(c.split()[2]) for c in trains)  # a Korean text file, not the built-in corpus
    assert any(c.startswith("gptkit train 소설.txt") for c in trains)  # the novels: a model that generalises
    assert any(c.startswith("gptkit train 봄비.txt") for c in trains)  # the story: what memorising looks like
    # the story the reader trains on is Korean prose, shipped beside the novels and copied in
    assert any("'bombi.txt', '봄비.txt'" in c for c in cmds)
    assert len(HANGUL.findall((ROOT / "tests" / "data" / "bombi.txt").read_text(encoding="utf-8"))) > 500
    for c in cmds:
        if c.startswith(("gptkit sample", "gptkit inspect")) and "--prompt" in c:
            assert HANGUL.search(c.split("--prompt", 1)[1]), c


SECTION = re.compile(r"^## (\d+)\. ", re.M)
TRY_IT = {"en": "**Try it.**", "ko": "**해 보기.**"}
SCRIPT = re.compile(r"^# save as (\S+)$", re.M)
MAP_NAME = re.compile(r"\b(?:transformer\.\w+|attn\.\w+|mlp\.\w+|ln_[12f]|lm_head)\b")


def sections(text: str) -> dict[int, str]:
    """A guide's numbered sections: number -> its text up to the next `## ` heading."""
    heads = list(re.finditer(r"^## .*$", text, re.M))
    out = {}
    for h, nxt in zip(heads, heads[1:] + [None], strict=True):
        m = SECTION.match(h.group(0) + " ")
        if m:
            out[int(m.group(1))] = text[h.end():nxt.start() if nxt else len(text)]
    return out


MAX_LINES = {"en": 930, "ko": 935}  # a guide is read from start to end: it may shrink, not grow


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_guide_stays_short(lang):
    lines = len(GUIDES[lang].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES[lang], f"{GUIDES[lang].name} has {lines} lines, more than {MAX_LINES[lang]}"


def test_korean_guide_has_every_english_section_and_script():
    en, ko = (sections(GUIDES[lang].read_text(encoding="utf-8")) for lang in ("en", "ko"))
    assert sorted(ko) == sorted(en) == list(range(len(en)))
    for n in en:  # the same scripts in the same sections, ported
        assert SCRIPT.findall(ko[n]) == SCRIPT.findall(en[n]), f"section {n}"


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_every_section_ends_with_a_try_it_that_runs(lang):
    for n, body in sections(GUIDES[lang].read_text(encoding="utf-8")).items():
        if n == 0:  # setting up
            continue
        assert TRY_IT[lang] in body, f"{GUIDES[lang].name} section {n} has no {TRY_IT[lang]}"
        last = body.rsplit(TRY_IT[lang], 1)[1]
        assert any(s.kind in ("console", "sh") for s in parse_guide(last)), f"section {n}: its try-it runs nothing"


@pytest.mark.parametrize("lang", sorted(GUIDES))
def test_the_model_map_names_what_the_model_has(lang):
    import torch

    from gptkit.config import ModelConfig
    from gptkit.model import GPT

    body = sections(GUIDES[lang].read_text(encoding="utf-8"))[2]
    drawing = body.split("```text\n", 1)[1].split("```", 1)[0]
    names = set(MAP_NAME.findall(drawing))
    with torch.device("meta"):
        modules = {n for n, _ in GPT(ModelConfig(vocab_size=104)).named_modules()}
    assert names >= {"transformer.wte", "transformer.wpe", "transformer.h", "ln_1", "attn.c_attn", "attn.c_proj",
                     "ln_2", "mlp.c_fc", "mlp.c_proj", "transformer.ln_f", "lm_head"}
    for name in names:
        assert any(m == name or m.endswith("." + name) for m in modules), f"the map names {name!r}, the model has no such part"


SAMPLE = '''Intro.

```python
# save as hello.py
print("hi")
```

<!-- test: numbers vary -->
```console
$ python -c "print('step 2000 | loss 1.81')
print('done')"
step 2000 | loss 1.81
…
$ gptkit train --max-iters 2000 2>&1 | tail -1
done: step 2000, … 291s
```

<!-- test: expect "B" -->
```console
$ echo A B
A B
```
'''


def test_parser_and_checker_catch_drift():
    steps = parse_guide(SAMPLE)
    assert [s.kind for s in steps] == ["file", "console", "console", "console"]
    assert steps[0].name == "hello.py" and steps[1].text.count("\n") == 1  # a quote left open continues
    assert steps[1].shown == ["step 2000 | loss 1.81", "…"] and steps[1].mode == "numbers vary"
    assert shorten(steps[2].text) == "gptkit train --eval-iters 2 --dtype float32 --max-iters 4 2>&1 | tail -1"
    assert shorten("python no_mask.py --max-iters 200") == \
        "python no_mask.py --eval-iters 2 --dtype float32 --max-iters 4"
    assert steps[3].expect == ["B"]
    assert shorten("gptkit inspect --neighbors --max-positions 20000 --eval 500 --eval-iters 9") == \
        "gptkit inspect --neighbors --max-positions 1000 --eval 20 --eval-iters 9"
    # numbers may differ and columns shift; words may not
    assert missing_lines(steps[1], "step   40 | loss 3.2\ndone\n") == []
    assert missing_lines(steps[1], "step 40 | lost 3.2\n") == ["step 2000 | loss 1.81"]
    exact = Step("console", 1, "x", shown=["tensor([0.4421, 0.5931, 0.5790])", "a … c"])
    assert missing_lines(exact, "tensor([0.4421, 0.5931, 0.5790])\na b c\n") == []
    assert missing_lines(exact, "tensor([0.4421, 0.5931, 0.5791])\na b c d\n") == exact.shown
    assert missing_lines(steps[3], "A C\n") == ["B"]
    with pytest.raises(ValueError, match="console or sh"):
        parse_guide("```bash\ngptkit train\n```\n")
    with pytest.raises(ValueError, match="console block"):
        parse_guide("```text\n$ gptkit train\n```\n")
