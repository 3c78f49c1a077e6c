"""docs/cli.md, the command reference, is generated from the Typer app and must match it exactly.

The app is walked through click (`typer.main.get_command`): one line per subcommand, argument and
flag, with the help text `--help` prints. A flag added, removed or reworded without regenerating the
page fails here, first with the names that differ, then with the first line that differs.
Regenerate it with `python -m tests.test_command_reference > docs/cli.md`.
"""

from __future__ import annotations

import re

import typer

from tests.conftest import ROOT

PAGE = ROOT / "docs" / "cli.md"
HEADING = "# Command reference"
INTRO = ("One line per command, argument and flag, as `gptkit COMMAND --help` prints them, in the order a\n"
         "user works. Generated from the app by `python -m tests.test_command_reference > docs/cli.md`;\n"
         "`tests/test_command_reference.py` fails when this page and the app differ. Two spellings still\n"
         "work without being listed: `--checkpoints` (and `GPTKIT_CHECKPOINTS`), the old name of `--store`,\n"
         "kept for one release; and `train --run-name`, for `--run` under torchrun, whose parser claims `--run`.")


def app_command():
    from gptkit.cli import app

    return typer.main.get_command(app)


def param_names(param) -> list[str]:
    """A click parameter as the names a user types: every spelling of an option, or ARG for an argument."""
    if param.param_type_name == "argument":
        return [param.name.upper()]
    return [*param.opts, *param.secondary_opts]


def shown(params) -> list:
    """The parameters `--help` lists (not -h itself, nor hidden compatibility spellings)."""
    return [p for p in params if p.name != "help" and not getattr(p, "hidden", False)]


def app_reference() -> dict[str, set[str]]:
    """{command path: names of its arguments and flags} for the root and every subcommand."""
    root = app_command()
    ref = {"gptkit": {n for p in shown(root.params) for n in param_names(p)}}
    for name, cmd in root.commands.items():
        ref[f"gptkit {name}"] = {n for p in shown(cmd.params) for n in param_names(p)}
    return ref


def one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def param_line(param, ctx) -> str:
    """`- `spelling` — help`, the spelling and help as `--help` prints them (an argument as its NAME)."""
    spelled, help_text = param.get_help_record(ctx) or ("", "")
    if param.param_type_name == "argument":
        spelled = param.name.upper()
    return f"- `{spelled}` — {one_line(help_text)}"


def render() -> str:
    """The page, generated from the app (help texts as they are now)."""
    root = app_command()
    root_ctx = root.context_class(root, info_name="gptkit")
    lines = [HEADING, "", INTRO, "", f"**`gptkit`** — {one_line(root.help)}"]
    lines += [param_line(p, root_ctx) for p in shown(root.params)]
    for name, cmd in root.commands.items():
        ctx = cmd.context_class(cmd, info_name=name, parent=root_ctx)
        args = " ".join(p.name.upper() if p.required else f"[{p.name.upper()}]"
                        for p in cmd.params if p.param_type_name == "argument")
        summary = one_line((cmd.help or "").split("\n\n")[0])
        lines += ["", f"**`gptkit {name}{' ' + args if args else ''}`** — {summary}"]
        lines += [param_line(p, ctx) for p in shown(cmd.params)]
    return "\n".join(lines) + "\n"


def page_reference(section: str) -> dict[str, set[str]]:
    """{command path: names} from the section: a `**`gptkit …`**` line opens a command, `- `…`` lines list
    its arguments (upper case) and flags."""
    ref: dict[str, set[str]] = {}
    current = None
    for line in section.splitlines():
        head = re.match(r"\*\*`(gptkit(?: [a-z]+)?)", line)
        if head:
            current = head.group(1)
            ref[current] = set()
        elif line.startswith("- `") and current is not None:
            spelled = line[3:line.index("`", 3)]
            if spelled.startswith("-"):  # `-f, --file <path>`, `--bias / --no-bias`: the flags, not the metavar
                ref[current] |= set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", spelled))
            else:  # an argument: its name alone
                ref[current].add(spelled)
    return ref


def differences(readme: dict[str, set[str]], app: dict[str, set[str]]) -> list[str]:
    problems = []
    for cmd in sorted(set(readme) | set(app)):
        if cmd not in readme:
            problems.append(f"`{cmd}` is missing from the page")
        elif cmd not in app:
            problems.append(f"`{cmd}` is in the page but not in the app")
        else:
            missing, extra = sorted(app[cmd] - readme[cmd]), sorted(readme[cmd] - app[cmd])
            if missing:
                problems.append(f"`{cmd}`: not in the page: {', '.join(missing)}")
            if extra:
                problems.append(f"`{cmd}`: in the page but not in the app: {', '.join(extra)}")
    return problems


def test_the_page_names_every_command_and_flag_of_the_app():
    problems = differences(page_reference(PAGE.read_text(encoding="utf-8")), app_reference())
    assert not problems, ("docs/cli.md is out of date (regenerate it with `python -m tests.test_command_reference "
                          "> docs/cli.md`):\n" + "\n".join(problems))


def test_the_page_is_exactly_what_the_app_generates():
    page, fresh = PAGE.read_text(encoding="utf-8").splitlines(), render().splitlines()
    first = next((i for i, (a, b) in enumerate(zip(page, fresh, strict=False)) if a != b), min(len(page), len(fresh)))
    assert page == fresh, (f"docs/cli.md differs from the app at line {first + 1}:\n  page: "
                           f"{page[first] if first < len(page) else '(end)'}\n  app:  "
                           f"{fresh[first] if first < len(fresh) else '(end)'}\nregenerate it with "
                           "`python -m tests.test_command_reference > docs/cli.md`")
    bullets = [ln for ln in page if ln.startswith("- `")]
    expected = sum(len(shown(cmd.params)) for cmd in [app_command(), *app_command().commands.values()])
    assert len(bullets) == expected  # one line per argument or flag, no duplicates


def test_the_check_notices_a_dropped_or_invented_flag():
    section = render()
    assert not differences(page_reference(section), app_reference())
    dropped = "\n".join(ln for ln in section.splitlines() if not ln.startswith("- `--max-iters"))
    assert differences(page_reference(dropped), app_reference()) == [
        "`gptkit train`: not in the page: --max-iters"]
    invented = section.replace("- `--overwrite` —", "- `--overwrite, --force` —", 1)
    assert any("--force" in p for p in differences(page_reference(invented), app_reference()))
    renamed = section.replace("**`gptkit sample`**", "**`gptkit generate`**")
    assert "`gptkit sample` is missing from the page" in differences(page_reference(renamed), app_reference())


if __name__ == "__main__":
    print(render(), end="")
