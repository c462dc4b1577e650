"""The `taskmesh` command: a click group whose commands parse, call the store or the
workers' launcher, and print."""

from taskmesh.cli.commands import main
from taskmesh.cli.dashboard import dashboard
from taskmesh.cli.jobs import job

# Registered here, not in commands.py: these commands use commands.py's options and helpers.
main.add_command(dashboard)
main.add_command(job)

__all__ = ["main"]
