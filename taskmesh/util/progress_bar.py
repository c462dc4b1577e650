"""A progress bar over refs as they finish: `taskmesh.util.progress(refs)` yields each
result as soon as its task is done (taskmesh.wait underneath) while a tqdm bar advances.

    for result in taskmesh.util.progress([f.remote(i) for i in range(100)], desc="f"):
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from taskmesh.api import get, wait
from taskmesh.exceptions import GetTimeoutError
from taskmesh.objects import ObjectRef

__all__ = ["progress"]


def progress(refs: Sequence[ObjectRef], desc: str | None = None, *, timeout: float | None = None,
             **tqdm_kwargs: Any) -> Iterator[Any]:
    """The results of `refs` in the order their tasks finish (a task's error is raised
    when its turn comes), with a tqdm bar of `len(refs)` that advances with each;
    `tqdm_kwargs` go to tqdm (file=, unit=, leave=...). `timeout`: seconds to wait for
    each next result (GetTimeoutError when none is ready by then)."""
    from tqdm import tqdm  # imported when a bar is made, not with taskmesh

    pending = list(refs)
    with tqdm(total=len(pending), desc=desc, **tqdm_kwargs) as bar:
        while pending:
            ready, pending = wait(pending, num_returns=1, timeout=timeout, fetch_local=False)
            if not ready:
                raise GetTimeoutError(f"no result of the {len(pending)} pending refs within {timeout} s")
            if pending:  # whatever else is done by now comes in the same step
                more, pending = wait(pending, num_returns=len(pending), timeout=0, fetch_local=False)
                ready += more
            for value in get(ready):
                bar.update(1)
                yield value
