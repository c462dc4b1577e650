"""The wire records: what crosses Redis or a process boundary, each with its codec in
this one module."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

# Method names every actor answers to (Ray's), besides the user's methods.
TERMINATE = "__ray_terminate__"


READY = "__ray_ready__"

# Values up to this size travel inside the completion notice, saving a fetch in `get`.
NOTICE_INLINE_LIMIT = 64 * 1024


def encode_notice(task_id: str, objs: Sequence[tuple[str, bytes, bytes]], *, item: bool = False) -> bytes:
    """A completion notice for the owner's done stream: [task id, [[object id, kind, data
    or None when larger than NOTICE_INLINE_LIMIT], ...]] (+ [1] for a generator item)."""
    notice: list[Any] = [task_id, [[oid, kind, data if len(data) <= NOTICE_INLINE_LIMIT else None]
                                   for oid, kind, data in objs]]
    if item:
        notice.append(1)
    return msgpack.packb(notice, use_bin_type=True)


@dataclass(slots=True)
class TaskContext:
    """What the runtime context reports while a task runs in this process."""

    job_id: str | None = None
    task_id: str | None = None
    task_name: str | None = None
    resources: dict[str, float] = field(default_factory=dict)
    actor_id: str | None = None
    pg: list | None = None  # [pg id, bundle index, capture child tasks] (PgTarget.to_wire)
    gpu_ids: list[int] = field(default_factory=list)


def placement(spec: dict, fields: dict[bytes, bytes]) -> dict[str, Any]:
    """TaskContext fields of where a task or actor was placed: its placement group and
    the GPU ids its agent assigned (also set as CUDA_VISIBLE_DEVICES, as Ray does)."""
    raw = fields.get(b"gpus")
    gpu_ids = [int(g) for g in raw.decode().split(",") if g] if raw is not None else []
    if raw is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
    return {"pg": spec.get("pg"), "gpu_ids": gpu_ids}
