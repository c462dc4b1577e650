"""Configuration read from the environment."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV_TEMP_DIR = "TASKMESH_TEMP_DIR"


def temp_root() -> Path:
    default = Path(tempfile.gettempdir()) / f"taskmesh-{os.getuid()}"
    root = Path(os.environ.get(ENV_TEMP_DIR) or default)
    root.mkdir(parents=True, exist_ok=True)
    return root


def env_number(name: str, default: Any, *, cast: Callable[[str], Any] = float,
               positive: bool = False, expected: str = "a number >= 0") -> Any:
    """A number from the environment variable `name` (`default` when unset or empty);
    a value that does not parse, is negative (or zero, with `positive`) raises
    ValueError naming the variable."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        value = None
    if value is None or not value >= 0 or (positive and value == 0):
        raise ValueError(f"{name}={raw!r}: expected {expected}")
    return value
