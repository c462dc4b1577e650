"""Ray's `ray.remote_function` path: the remote function handle lives in taskmesh._core."""

from taskmesh._core.remote_function import RemoteFunction

__all__ = ["RemoteFunction"]
