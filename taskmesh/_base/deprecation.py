"""Ray's deprecation warnings: `RayDeprecationWarning` (also `taskmesh.util.annotations`),
shown once per module that triggers it unless the program set its own warning filters."""

from __future__ import annotations

import os
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


# taskmesh's own source files: a warning is attributed to the first frame outside them.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn_user(message: str) -> None:
    """`warn`, attributed to the user's line however deep inside taskmesh the check runs
    (a decorator, `.options()` or a call reach it through different frames)."""
    frame, level = sys._getframe(1), 3  # level 3: warn_user's caller, as warnings counts
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warn(message, stacklevel=level)
