"""The command-line reference page, generated from the `flexsample` typer app itself.

`render()` walks the same click command tree that `flexsample --help` and
`flexsample COMMAND --help` print from (`typer.main.get_command(flexsample.cli.app.app)`):
every command, its usage line, its description and every parameter with the help text and
default that `--help` shows, grouped by the panels `--help` draws. `docs/hooks.py` writes the
result into the site as `cli.md` at build time, so the page cannot drift from the code;
`tests/test_docs.py` checks that every flag `--help` prints is on it.

Run it by hand to see the page: `python docs/gen_cli.py > /tmp/cli.md`.
"""

from __future__ import annotations

import re
from typing import Any

DEFAULT_PANEL = {"argument": "Arguments", "option": "Options"}

INTRO = """\
# Command line

Generated from the `flexsample` command itself when this site is built: the same
descriptions, flags, defaults and accepted ranges as `flexsample --help` and
`flexsample COMMAND --help`. Flags are grouped as `--help` groups them.

Every flag of `flexsample run` that sets a component's option (`--patience`, `--knn`,
`--focal-gamma`, ...) names the components that declare it; a flag of a component the run
did not choose is refused (see [Configuration and recipes](configuration.md)).
`flexsample bench` passes every `flexsample run` flag it does not define itself on to each
cell.
"""


def _click_context(command: Any, name: str, parent: Any | None = None) -> Any:
    """A click context for `command` (typer >= 0.29 carries its own copy of click)."""
    try:
        from typer._click.core import Context
    except ImportError:  # an older typer on the click package
        from click import Context
    return Context(command, info_name=name, parent=parent)


def root_command() -> Any:
    """The click group behind `flexsample` (what its --help prints from)."""
    import typer

    from flexsample.cli.app import app

    return typer.main.get_command(app)


def _escape_text(text: str) -> str:
    """Plain help text as Markdown: code spans kept, characters Markdown or HTML would
    read (angle brackets, pipes, emphasis marks, brackets) escaped outside them."""
    text = text.replace("\\[", "[")  # rich markup escapes in typer help strings
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(part)
            continue
        part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        part = part.replace("|", "&#124;")
        part = re.sub(r"([\\*_\[\]])", r"\\\1", part)
        out.append(part)
    return "".join(out)


def _one_line(text: str) -> str:
    return " ".join(str(text or "").split())


def _paragraphs(text: str) -> list[str]:
    """A command's help as paragraphs (click's `\\b` no-rewrap marker dropped)."""
    paras = []
    for block in re.split(r"\n\s*\n", text or ""):
        block = block.replace("\b", "").strip()
        if block:
            paras.append(_one_line(block))
    return paras


def visible_params(command: Any, ctx: Any) -> list[Any]:
    """The parameters `--help` shows for `command` (its --help option included)."""
    return [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]


def param_flags(param: Any) -> list[str]:
    """Every spelling of an option (`--sync-bn`, `--no-sync-bn`); an argument's name."""
    if param.param_type_name == "argument":
        return [param.name.upper()]
    return [*param.opts, *param.secondary_opts]


def _row(param: Any, ctx: Any) -> tuple[str, str, str]:
    record = param.get_help_record(ctx) or ("", getattr(param, "help", "") or "")
    spelled, help_text = record
    flags = param_flags(param)
    value = ""
    if param.param_type_name == "argument":
        value = spelled.split(" ", 1)[1] if " " in spelled else ""
    elif not getattr(param, "is_flag", False):
        value = spelled.rsplit(" ", 1)[1] if " " in spelled else ""
    flag_cell = " / ".join(f"`{f}`" for f in flags)
    if param.param_type_name == "argument" and not param.required:
        flag_cell += " (optional)"
    value_cell = f"`{value}`" if value else ""
    return flag_cell, value_cell, _escape_text(_one_line(help_text))


def _panels(command: Any, ctx: Any) -> dict[str, list[Any]]:
    """Parameters by the panel `--help` draws them in, in first-seen order; the default
    Arguments / Options panels first, as typer draws them."""
    panels: dict[str, list[Any]] = {"Arguments": [], "Options": []}
    for param in visible_params(command, ctx):
        panel = getattr(param, "rich_help_panel", None) or DEFAULT_PANEL[param.param_type_name]
        panels.setdefault(panel, []).append(param)
    return {k: v for k, v in panels.items() if v}


def _table(params: list[Any], ctx: Any) -> list[str]:
    lines = ["| flag | value | what it does |", "|---|---|---|"]
    for param in params:
        lines.append("| {} | {} | {} |".format(*_row(param, ctx)))
    return lines


def _usage(command: Any, ctx: Any) -> str:
    pieces = " ".join(command.collect_usage_pieces(ctx))
    return f"{ctx.command_path} {pieces}".strip()


def render_command(command: Any, ctx: Any, level: int = 2) -> list[str]:
    """One command's section: usage, description, its parameters by panel."""
    lines = [f"{'#' * level} `{ctx.command_path}`", ""]
    lines += ["```text", _usage(command, ctx), "```", ""]
    for para in _paragraphs(command.help or ""):
        lines += [_escape_text(para), ""]
    for panel, params in _panels(command, ctx).items():
        lines += [f"{'#' * (level + 1)} {panel}", ""]
        lines += _table(params, ctx)
        lines.append("")
    return lines


def command_names() -> list[str]:
    """The subcommands of `flexsample`, in the order `--help` lists them."""
    root = root_command()
    return list(root.commands)


def render() -> str:
    """The whole page (Markdown)."""
    root = root_command()
    root_ctx = _click_context(root, "flexsample")
    lines = [INTRO, "## `flexsample`", "", "```text", _usage(root, root_ctx), "```", ""]
    for para in _paragraphs(root.help or ""):
        lines += [_escape_text(para), ""]
    lines += ["| command | what it does |", "|---|---|"]
    for name, command in root.commands.items():
        if getattr(command, "hidden", False):
            continue
        short = command.get_short_help_str(limit=300)
        lines.append(f"| [`flexsample {name}`](#flexsample-{name}) | {_escape_text(short)} |")
    lines.append("")
    lines += ["### Options", ""] + _table(visible_params(root, root_ctx), root_ctx) + [""]
    for name, command in root.commands.items():
        if getattr(command, "hidden", False):
            continue
        ctx = _click_context(command, name, parent=root_ctx)
        lines += render_command(command, ctx)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
