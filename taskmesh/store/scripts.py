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
        script = self._loaded.get(name)
        if script is None:
            with self._lock:
                script = self._loaded.get(name)
                if script is None:
                    script = self._client.register_script(load_script(f"{name}.lua"))
                    self._loaded[name] = script
        return script
