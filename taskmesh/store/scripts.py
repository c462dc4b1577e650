"""The Lua scripts of lua/, read from the package's data and registered once per client."""

from __future__ import annotations

import threading
from importlib import resources

import redis
from redis.commands.core import Script


def load_script(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}").read_text()


class Scripts:
    """`scripts["complete"]` is lua/complete.lua registered on the client (EVALSHA, with
    a reload on NOSCRIPT). Each script is read and hashed the first time it is used."""

    def __init__(self, client: redis.Redis):
        self._client = client
        self._loaded: dict[str, Script] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Script:
        return self._registered(name, "")

    def allowing_oom(self, name: str) -> Script:
        """The script flagged `allow-oom` (Redis 7): it writes even when the server is
        over maxmemory. Only for small writes a caller would otherwise wait for forever."""
        return self._registered(name, "#!lua flags=allow-oom\n")

    def _registered(self, name: str, shebang: str) -> Script:
        key = shebang + name
        script = self._loaded.get(key)
        if script is None:
            with self._lock:
                script = self._loaded.get(key)
                if script is None:
                    script = self._client.register_script(shebang + load_script(f"{name}.lua"))
                    self._loaded[key] = script
        return script
