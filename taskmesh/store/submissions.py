"""Submitted jobs' share of the Store (`taskmesh job submit`, JobSubmissionClient): each
job's hash, the index of them, its driver's output and the drivers its entrypoint
started. A mixin of `Store` (client.py); every key comes from `Keys` (keys.py). What the
statuses mean, and who moves a job from one to the next, is in taskmesh/job_submission."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from taskmesh.store.core import StoreCore
from taskmesh.store.records import _text, stream_entries, translate_errors

# Entries kept in a job's output stream (MAXLEN ~); one entry is a batch of lines.
SUBMISSION_LOGS_MAXLEN = 10_000
LOG_FIELD = b"l"


class SubmissionMethods(StoreCore):
    """Submitted jobs (mixed into Store)."""

    @translate_errors
    def new_submission(self, submission_id: str, fields: dict[str, str], at_ms: int) -> bool:
        """Record a job; False (and nothing written) when its submission id is taken."""
        flat = [item for pair in fields.items() for item in pair]
        return self.scripts["submission_new"](
            keys=[self.keys.submission(submission_id), self.keys.submissions()],
            args=[submission_id, at_ms, *flat]) == 1

    @translate_errors
    def submission(self, submission_id: str) -> dict[str, str] | None:
        """The job's hash; None when there is no such job."""
        raw = self.redis.hgetall(self.keys.submission(submission_id))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    @translate_errors
    def submissions(self) -> list[dict[str, str]]:
        """Every recorded job's hash, oldest submission first."""
        ids = [_text(i) for i in cast(list, self.redis.zrange(self.keys.submissions(), 0, -1))]
        pipe = self.redis.pipeline(transaction=False)
        for submission_id in ids:
            pipe.hgetall(self.keys.submission(submission_id))
        rows = []
        for raw in pipe.execute() if ids else []:
            row = {_text(k): _text(v) for k, v in raw.items()}
            if row.get("status"):  # a job deleted meanwhile
                rows.append(row)
        return rows

    @translate_errors
    def move_submission(self, submission_id: str, from_statuses: Iterable[str], status: str,
                        fields: dict[str, str] | None = None) -> tuple[bool, str]:
        """Set the job's status (and `fields` with it) if it is one of `from_statuses`
        now; `status` "" sets only the fields. Returns (whether it moved, the status it
        had: "" for no such job)."""
        flat = [item for pair in (fields or {}).items() for item in pair]
        moved, found = self.scripts["submission_status"](
            keys=[self.keys.submission(submission_id)],
            args=[" ".join(from_statuses), status, *flat])
        return moved == 1, _text(found)

    @translate_errors
    def submission_field(self, submission_id: str, field: str) -> str | None:
        value = self.redis.hget(self.keys.submission(submission_id), field)
        return None if value is None else _text(value)

    @translate_errors
    def add_submission_output(self, submission_id: str, lines: Sequence[str]) -> None:
        """One batch of the driver's output lines (a capped stream entry)."""
        self.redis.xadd(self.keys.submission_logs(submission_id), {LOG_FIELD: "\n".join(lines)},
                        maxlen=SUBMISSION_LOGS_MAXLEN, approximate=True)

    @translate_errors
    def submission_output(self, submission_id: str, after: str = "0-0",
                          block_ms: int | None = None) -> tuple[str, list[str]]:
        """The driver's output lines recorded after stream entry `after` (waiting up to
        `block_ms` for one when there is none yet) and the id of the last entry read."""
        key = self.keys.submission_logs(submission_id)
        if block_ms is None:
            entries = stream_entries(self.redis.xrange(key, min=f"({after}" if after != "0-0" else "-"))
        else:
            reply = cast(list, self.redis.xread({key: after}, block=block_ms) or [])
            entries = stream_entries(reply[0][1]) if reply else []
        lines: list[str] = []
        for entry_id, fields in entries:
            after = _text(entry_id)
            if LOG_FIELD in fields:
                lines += _text(fields[LOG_FIELD], "replace").split("\n")
        return after, lines

    @translate_errors
    def add_submission_driver(self, submission_id: str, tag: str, job_id: str) -> None:
        """A driver the job's entrypoint started (its `init()`); the first one's job is
        the submitted job's `job_id`."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.keys.submission_drivers(submission_id), f"{tag} {job_id}")
        pipe.hsetnx(self.keys.submission(submission_id), "job_id", job_id)
        pipe.execute()

    @translate_errors
    def submission_drivers(self, submission_id: str) -> list[tuple[str, str]]:
        """(owner tag, job id) of the drivers the job's entrypoint started."""
        members = cast(Any, self.redis.smembers(self.keys.submission_drivers(submission_id)))
        return sorted(cast(tuple[str, str], tuple(_text(m).split(" ", 1))) for m in members)

    @translate_errors
    def driver_listed(self, tag: str, job_id: str) -> bool:
        """Whether the driver is still among the live ones (it has not shut down)."""
        return self.redis.zscore(self.keys.drivers(), f"{tag} {job_id}") is not None

    @translate_errors
    def delete_submission(self, submission_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.submissions(), submission_id)
        pipe.unlink(self.keys.submission(submission_id), self.keys.submission_logs(submission_id),
                    self.keys.submission_drivers(submission_id))
        pipe.execute()
