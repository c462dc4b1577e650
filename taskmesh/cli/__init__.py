"""The `taskmesh` command: a click group whose commands parse, call the store or the
workers' launcher, and print."""

from taskmesh.cli.commands import main
from taskmesh.cli.dashboard import dashboard

# Registered here, not in commands.py: the dashboard command uses commands.py's options.
main.add_command(dashboard)

__all__ = ["main"]
