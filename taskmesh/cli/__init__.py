"""The `taskmesh` command: a click group whose commands parse, call the store or the
workers' launcher, and print."""

from taskmesh.cli.commands import main

__all__ = ["main"]
