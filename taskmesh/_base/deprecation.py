"""Ray's deprecation warnings: `RayDeprecationWarning` (also `taskmesh.util.annotations`),
shown once per module that triggers it unless the program set its own warning filters."""

from __future__ import annotations

import sys
import warnings


class RayDeprecationWarning(DeprecationWarning):
    """A deprecated API or option was used (a DeprecationWarning, for filtering)."""


PREFIX = ("This API is deprecated and may be removed in future releases. You could suppress "
          'this warning by setting env variable PYTHONWARNINGS="ignore::DeprecationWarning"\n')

if not sys.warnoptions:  # as Ray: once per module, not hidden as DeprecationWarnings are
    warnings.filterwarnings("module", category=RayDeprecationWarning)


def warn(message: str, stacklevel: int = 3) -> None:
    """Warn that what the caller's caller used is deprecated; `message` says what instead."""
    warnings.warn(PREFIX + message, RayDeprecationWarning, stacklevel=stacklevel)
