"""``rescompile version``: the versions of rescompile and its runtimes."""

from __future__ import annotations

from rescompile.commands.base import app, console


@app.command()
def version() -> None:
    """Print the versions of rescompile and its runtimes."""
    from rescompile.pipeline import versions

    for k, v in versions().items():
        console.print(f"{k} {v}", highlight=False)
