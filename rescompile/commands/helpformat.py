"""A command's ``--help`` in panels that reads at 80 columns: two columns (option, help), nothing cut off.

Typer's own layout gives five columns (long, short and ``--no-`` names, type, help) the same
share of the width, so at 80 columns option names and words are cut with an ellipsis. Here the
names column is as narrow as the names (a ``--no-`` form or a long type goes on its own line)
and the help takes the rest, wrapped. Panels are the options' ``rich_help_panel``, in the order
they first appear; the texts are click's own help records (help, ``[default: ...]``, ranges).
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

ARGUMENTS = "Arguments"
OPTIONS = "Options"
NAMES_WIDTH = 24  # widest option name line before its type goes on a line of its own


class HelpCommand(TyperCommand):
    """A Typer command whose ``--help`` is :func:`render_help`."""

    def format_help(self, ctx: Any, formatter: Any) -> None:  # click's Context and HelpFormatter
        width = os.environ.get("TERMINAL_WIDTH")  # Typer's override of the detected width
        Console(width=int(width) if width and width.isdigit() else None, highlight=False).print(render_help(self, ctx))


def _paragraphs(text: str) -> list[RenderableType]:
    """Paragraphs (blank-line separated; lines joined) keeping a paragraph's indent (examples)."""
    out: list[RenderableType] = []
    for para in text.strip("\n").split("\n\n"):
        indent = len(para) - len(para.lstrip(" "))
        joined = " ".join(line.strip() for line in para.splitlines() if line.strip())
        if joined:
            out += [Text(""), Padding(Text(joined), (0, 0, 0, indent))] if out else [Padding(Text(joined), (0, 0, 0, indent))]
    return out


def _name_lines(names: str) -> Text:
    """``--keep-first-last / --no-keep-first-last`` -> one name per line; a long ``--opt <type>`` -> two lines."""
    text = Text()
    for i, part in enumerate(names.split(" / ")):
        name, sep, kind = part.partition(" <")
        kind = kind.replace(" range>", ">")  # "<int range>": the range itself is in the help ("[x>=1]")
        if i:
            text.append("\n")
        text.append(name, style="bold cyan")
        if sep:
            text.append("\n  " if len(part) > NAMES_WIDTH else " ", style="")
            text.append("<" + kind, style="yellow")
    return text


def _panel(title: str, rows: list[tuple[Text, str]], names_width: int) -> Panel:
    table = Table(show_header=False, box=None, expand=True, padding=(0, 1), pad_edge=False)
    table.add_column("option", width=names_width, overflow="fold")
    table.add_column("help", ratio=1, overflow="fold")
    for names, help_text in rows:
        table.add_row(names, Text(help_text))
    return Panel(table, title=title, title_align="left", border_style="dim")


def render_help(command: Any, ctx: Any) -> Group:
    """Usage, the docstring, one panel per help panel (arguments first, plain options last), the epilog."""
    parts: list[RenderableType] = [Padding(Text(command.get_usage(ctx), style="bold"), 1)]
    if command.help:
        parts.append(Padding(Group(*_paragraphs(command.help)), (0, 1, 1, 1)))
    panels: dict[str, list[tuple[Text, str]]] = {ARGUMENTS: []}
    for param in command.get_params(ctx):
        record = None if getattr(param, "hidden", False) else param.get_help_record(ctx)
        if record is None:
            continue
        default = ARGUMENTS if param.param_type_name == "argument" else OPTIONS
        panels.setdefault(getattr(param, "rich_help_panel", None) or default, []).append((_name_lines(record[0]), record[1]))
    width = max((len(line) for rows in panels.values() for names, _ in rows for line in names.plain.splitlines()), default=0)
    plain = panels.pop(OPTIONS, [])
    parts += [_panel(title, rows, width) for title, rows in panels.items() if rows]
    if plain:
        parts.append(_panel(OPTIONS, plain, width))
    if command.epilog:
        parts.append(Padding(Group(*_paragraphs(command.epilog)), 1))
    return Group(*parts)
