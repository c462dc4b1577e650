"""The `taskmesh` command: a click group whose commands parse, call the store or the
workers' launcher, and print."""

from taskmesh.cli.commands import main
from taskmesh.cli.jobs import job

main.add_command(job)  # here, not in commands.py: jobs.py uses commands.py's helpers

__all__ = ["main"]
