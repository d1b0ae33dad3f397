"""The CLI's commands: ``base`` (the app, consoles, exit codes), ``options`` (shared option groups), one module per command group.

``rescompile.cli`` imports each command module, which registers its command(s) on ``base.app``.
"""
