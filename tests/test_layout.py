"""The layout's rules, checked on the source (DESIGN.md, "Layer rules"): the import graph of gptkit has
no cycle; tokenizers/, data/, config.py and errors.py import no torch, not even through another
module; the model imports nothing but config; nothing outside cli/ prints, writes to stdout or
stderr, or exits; and every module keeps to its line budget (DESIGN.md, "Rough budgets": split by
responsibility when one grows past it). Each checker is also run on planted violations, so a rule
cannot pass by checking nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gptkit"
TORCH_FREE = ("gptkit.tokenizers", "gptkit.data", "gptkit.config", "gptkit.errors")
MODEL_MAY_IMPORT = {"gptkit.config"}
OUTPUT_CALLS = {"print", "exit", "quit", "input", "breakpoint", "sys.exit", "os._exit", "os.abort",
                "sys.stdout.write", "sys.stderr.write"}
OUTPUT_NAMES = {"sys.stdout", "sys.stderr", "sys.__stdout__", "sys.__stderr__"}
OUTPUT_MODULES = {"typer", "click", "rich"}  # the terminal's libraries belong to cli/
MODULE_LINES = 450  # any module; past it, one module is doing two modules' work
LINE_BUDGETS = {  # module -> its own budget, and why it differs
    "gptkit.model": (260, "the whole model readable top to bottom, as nanoGPT's (issue 21)"),
}


def sources() -> dict[str, str]:
    """Module name -> source, for every module of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path.read_text(encoding="utf-8")
    return out


def imports_of(name: str, source: str, modules: set[str]) -> set[str]:
    """Every module `name` imports, anywhere in its body (function-level imports included): gptkit
    modules resolved to the module itself (`from gptkit.data import chunks` is gptkit.data.chunks),
    others by their top-level name."""
    is_package = name in {m.rpartition(".")[0] for m in modules}
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its own package up
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
    return {m if m.startswith("gptkit") else m.split(".")[0] for m in found}


def graph(srcs: dict[str, str]) -> dict[str, set[str]]:
    mods = set(srcs)
    return {name: imports_of(name, src, mods) for name, src in srcs.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A cycle among the graph's own nodes, as a path that ends where it starts; None if acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(g[n] & g.keys()):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        path.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every gptkit module it imports, directly or not, with the packages that importing
    them runs (a submodule's import runs its package's __init__ first)."""
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n in seen or n not in g:
            continue
        seen.add(n)
        parents = [".".join(n.split(".")[:i]) for i in range(1, n.count(".") + 1)]
        todo += [m for m in g[n] | set(parents) if m.startswith("gptkit")]
    return seen


def torch_paths(g: dict[str, set[str]], roots: tuple[str, ...]) -> list[str]:
    """'module -> ... imports torch' for each module under `roots` that reaches torch."""
    bad = []
    for name in sorted(g):
        if not any(name == r or name.startswith(r + ".") for r in roots):
            continue
        culprits = sorted(m for m in reachable(g, name) if "torch" in g[m])
        if culprits:
            bad.append(f"{name} imports torch through {', '.join(culprits)}")
    return bad


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def output_uses(source: str) -> list[str]:
    """Where a module prints, touches stdout/stderr, exits, or imports the terminal's libraries."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call) and dotted(node.func) in OUTPUT_CALLS:
            hits.append(f"line {line}: {dotted(node.func)}()")
        elif isinstance(node, ast.Attribute) and dotted(node) in OUTPUT_NAMES:
            hits.append(f"line {line}: {dotted(node)}")
        elif isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in dotted(
                node.exc.func if isinstance(node.exc, ast.Call) else node.exc):
            hits.append(f"line {line}: raise SystemExit")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            hits += [f"line {line}: import {n}" for n in names if n.split(".")[0] in OUTPUT_MODULES]
    return hits


def over_budget(srcs: dict[str, str]) -> list[str]:
    """'module: N lines, over its budget of M' for each module longer than its budget."""
    out = []
    for name, src in sorted(srcs.items()):
        budget = LINE_BUDGETS.get(name, (MODULE_LINES, ""))[0]
        if (n := len(src.splitlines())) > budget:
            out.append(f"{name}: {n} lines, over its budget of {budget}")
    return out


def outside_cli(name: str) -> bool:
    return not (name == "gptkit.cli" or name.startswith("gptkit.cli.") or name == "gptkit.__main__")


# ------------------------------------------------------------------------------------------------
# The rules, on the real package


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(graph(sources()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_tokenizers_data_config_and_errors_import_no_torch():
    bad = torch_paths(graph(sources()), TORCH_FREE)
    assert not bad, "; ".join(bad)


def test_the_model_imports_only_config():
    extra = {m for m in graph(sources())["gptkit.model"] if m.startswith("gptkit")} - MODEL_MAY_IMPORT
    assert not extra, f"gptkit.model imports {sorted(extra)}"


def test_only_cli_prints_writes_to_the_terminal_or_exits():
    found = {name: hits for name, src in sources().items() if outside_cli(name) and (hits := output_uses(src))}
    assert not found, "; ".join(f"{name}: {', '.join(hits)}" for name, hits in found.items())


def test_every_module_keeps_to_its_line_budget():
    bad = over_budget(sources())
    assert not bad, "; ".join(bad) + " (split it by what it owns)"
    assert set(LINE_BUDGETS) <= set(sources()), "a budget names a module that is gone"


def test_every_subpackage_of_the_design_exists():
    names = set(sources())
    for pkg in ("gptkit.tokenizers", "gptkit.data", "gptkit.introspect", "gptkit.hf", "gptkit.cli", "gptkit.cli.views"):
        assert pkg in names
    for gone in ("gptkit.linear", "gptkit.cpuload", "gptkit.tokenizer", "gptkit.corpus"):
        assert gone not in names


# ------------------------------------------------------------------------------------------------
# The checkers, on planted violations


def test_a_cycle_hidden_behind_a_function_level_import_is_found():
    srcs = {"gptkit.a": "from gptkit.b import f\n",
            "gptkit.b": "def f():\n    from gptkit import a  # the usual way to hide one\n    return a\n"}
    assert find_cycle(graph(srcs)) == ["gptkit.a", "gptkit.b", "gptkit.a"]
    assert find_cycle(graph({**srcs, "gptkit.b": "def f():\n    return 1\n"})) is None


def test_torch_reached_through_another_module_is_found():
    srcs = {"gptkit.data": "", "gptkit.data.build": "from gptkit import checkpoint\n",
            "gptkit.checkpoint": "def load():\n    import torch\n", "gptkit.config": "import json\n"}
    assert torch_paths(graph(srcs), TORCH_FREE) == ["gptkit.data.build imports torch through gptkit.checkpoint"]


def test_a_submodule_import_runs_its_package():
    srcs = {"gptkit.config": "from gptkit.data.chunks import cut\n", "gptkit.data": "import torch\n",
            "gptkit.data.chunks": "cut = 1\n"}
    assert "gptkit.config imports torch through gptkit.data" in torch_paths(graph(srcs), TORCH_FREE)


@pytest.mark.parametrize("snippet", [
    "print('x')", "import sys\nsys.stdout.write('x')", "import sys\nsys.stderr.flush()", "import sys\nsys.exit(1)",
    "raise SystemExit(2)", "import os\nos._exit(1)", "import typer", "from rich.console import Console",
    "def f(out=None):\n    import sys\n    out = out or sys.stderr",
])
def test_each_way_of_reaching_the_terminal_is_found(snippet):
    assert output_uses(snippet)


def test_a_module_past_its_budget_is_found():
    srcs = {"gptkit.a": "x = 1\n" * MODULE_LINES, "gptkit.model": "x = 1\n" * 261}
    assert over_budget(srcs) == ["gptkit.model: 261 lines, over its budget of 260"]
    srcs["gptkit.a"] += "y = 2\n"
    assert over_budget(srcs)[0] == f"gptkit.a: {MODULE_LINES + 1} lines, over its budget of {MODULE_LINES}"


def test_ordinary_code_is_not_mistaken_for_output():
    assert output_uses("def print_rows(rows):\n    return [str(r) for r in rows]\nstdout = 'a name'\n") == []
