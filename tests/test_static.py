"""Static guarantees: nothing in the package can run code from a file it loads (no torch.load, no
pickle, no eval/exec, no trust_remote_code), and `ruff check` is clean."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# modules whose loaders can run code embedded in the data they read
PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
CODE_LOADERS = {"torch.load", "torch.jit.load", "torch.serialization.load", "torch.package"}
CODE_BUILTINS = {"eval", "exec"}


def dotted(node: ast.AST) -> str:
    """`torch.jit.load` for the expression torch.jit.load; '' for anything that is not a plain name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Every way `source` could load code from data: each item names the line and what was found."""
    found = []

    def hit(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLING_MODULES:
                    hit(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLING_MODULES:
                hit(node, f"from {node.module} import ...")
            for alias in node.names:
                if f"{node.module}.{alias.name}" in CODE_LOADERS:
                    hit(node, f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and dotted(node) in CODE_LOADERS:
            hit(node, dotted(node))
        elif isinstance(node, ast.Name) and node.id in CODE_BUILTINS | {"trust_remote_code"}:
            hit(node, node.id)
        elif isinstance(node, ast.Constant) and node.value == "trust_remote_code":
            hit(node, "'trust_remote_code'")
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "trust_remote_code":
                    hit(node, "trust_remote_code=")
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    hit(node, "allow_pickle=")
            if (isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in CODE_BUILTINS | {"load"}):
                hit(node, f"getattr(..., {node.args[1].value!r})")
    return found


@pytest.mark.parametrize("snippet", [
    "import pickle", "import pickle as p", "from pickle import loads", "import cloudpickle", "import shelve",
    "import torch\ntorch.load('x.pt')", "import torch\nm = torch.jit.load('m.pt')", "from torch import load",
    "eval('1+1')", "exec(code)", "f = eval", "x = getattr(builtins, 'exec')", "y = getattr(torch, 'load')",
    "AutoModel.from_pretrained('x', trust_remote_code=True)", "kw = {'trust_remote_code': True}",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
])
def test_the_checker_finds_each_forbidden_form(snippet):
    assert violations(snippet), snippet


def test_the_checker_allows_what_the_package_does():
    ok = ("import torch, json\nmodel.eval()\nfrom safetensors import safe_open\n"
          "np.load('a.npy', allow_pickle=False)\nx = json.loads(s)\nlogits.eval = 1\n")
    assert violations(ok) == []


def test_the_package_never_loads_code_from_data():
    files = sorted((ROOT / "gptkit").rglob("*.py"))
    assert len(files) > 20  # the whole package, not an empty glob
    found = [v for f in files for v in violations(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert found == []


def test_ruff_check_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "gptkit", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
