"""The README's "Command reference" lists exactly the subcommands, arguments and flags of the Typer app.

The app is walked through click (`typer.main.get_command`), so a flag added to or removed from any
command without a matching README line fails here. The descriptions are free text (first written by
`render()`); only the names are compared. Print a fresh section with `python -m tests.test_command_reference`.
"""

from __future__ import annotations

import re

import typer

from tests.conftest import ROOT

README = ROOT / "README.md"
HEADING = "## Command reference"
INTRO = ("One line per subcommand, argument and flag, as `gptkit COMMAND --help` prints them. "
         "`tests/test_command_reference.py`\nfails when a flag is added or removed without updating this "
         "list; print a fresh one with `python -m tests.test_command_reference`.")


def app_command():
    from gptkit.cli import app

    return typer.main.get_command(app)


def param_names(param) -> list[str]:
    """A click parameter as the names a user types: every spelling of an option, or ARG for an argument."""
    if param.param_type_name == "argument":
        return [param.name.upper()]
    return [*param.opts, *param.secondary_opts]


def app_reference() -> dict[str, set[str]]:
    """{command path: names of its arguments and flags} for the root and every subcommand."""
    root = app_command()
    ref = {"gptkit": {n for p in root.params for n in param_names(p) if n not in ("--help", "-h")}}
    for name, cmd in root.commands.items():
        ref[f"gptkit {name}"] = {n for p in cmd.params for n in param_names(p)}
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
    """The README section, generated from the app (help texts as they are now)."""
    root = app_command()
    root_ctx = root.context_class(root, info_name="gptkit")
    lines = [HEADING, "", INTRO, "", f"**`gptkit`** — {one_line(root.help)}"]
    lines += [param_line(p, root_ctx) for p in root.params if p.name != "help"]
    for name, cmd in root.commands.items():
        ctx = cmd.context_class(cmd, info_name=name, parent=root_ctx)
        args = " ".join(p.name.upper() if p.required else f"[{p.name.upper()}]"
                        for p in cmd.params if p.param_type_name == "argument")
        summary = one_line((cmd.help or "").split("\n\n")[0])
        lines += ["", f"**`gptkit {name}{' ' + args if args else ''}`** — {summary}"]
        lines += [param_line(p, ctx) for p in cmd.params if p.name != "help"]
    return "\n".join(lines) + "\n"


def readme_section(text: str) -> str:
    start = text.index(HEADING + "\n")
    end = text.find("\n## ", start + len(HEADING))
    return text[start:end if end != -1 else len(text)]


def readme_reference(section: str) -> dict[str, set[str]]:
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
            problems.append(f"`{cmd}` is missing from the README")
        elif cmd not in app:
            problems.append(f"`{cmd}` is in the README but not in the app")
        else:
            missing, extra = sorted(app[cmd] - readme[cmd]), sorted(readme[cmd] - app[cmd])
            if missing:
                problems.append(f"`{cmd}`: not in the README: {', '.join(missing)}")
            if extra:
                problems.append(f"`{cmd}`: in the README but not in the app: {', '.join(extra)}")
    return problems


def test_readme_command_reference_matches_the_app():
    text = README.read_text(encoding="utf-8")
    problems = differences(readme_reference(readme_section(text)), app_reference())
    assert not problems, ("README command reference is out of date (print a fresh one with "
                          "`python -m tests.test_command_reference`):\n" + "\n".join(problems))


def test_reference_sits_before_checkpoints_and_has_one_line_per_name():
    text = README.read_text(encoding="utf-8")
    assert text.index(HEADING) < text.index("## Checkpoints")
    section = readme_section(text)
    bullets = [ln for ln in section.splitlines() if ln.startswith("- `")]
    expected_lines = sum(len([p for p in cmd.params if p.name != "help"])
                         for cmd in [app_command(), *app_command().commands.values()])
    assert len(bullets) == expected_lines  # one line per argument or flag, no duplicates


def test_the_check_notices_a_dropped_or_invented_flag():
    section = render()
    assert not differences(readme_reference(section), app_reference())
    dropped = "\n".join(ln for ln in section.splitlines() if not ln.startswith("- `--max-iters"))
    assert differences(readme_reference(dropped), app_reference()) == [
        "`gptkit train`: not in the README: --max-iters"]
    invented = section.replace("- `--overwrite` —", "- `--overwrite, --force` —", 1)
    assert any("--force" in p for p in differences(readme_reference(invented), app_reference()))
    renamed = section.replace("**`gptkit sample`**", "**`gptkit generate`**")
    assert "`gptkit sample` is missing from the README" in differences(readme_reference(renamed), app_reference())


if __name__ == "__main__":
    print(render(), end="")
