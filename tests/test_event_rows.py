"""Task events folded into Ray's state-API rows, a summary and a Chrome trace, and the
filters over such rows: pure functions over the dicts that writers append to the events
stream (taskmesh/_core/events.py, taskmesh/util/state.py). tests/test_events.py checks
what real workers record."""

from __future__ import annotations

import random

import pytest

from taskmesh._base.wire import ActorSpec, QueueEntry, TaskSpec
from taskmesh._core import events
from taskmesh._core.events import FAILED, FINISHED, PENDING, RUNNING
from taskmesh.util.state import apply_filters, parse_filter

T1, T2 = "aa" * 12, "bb" * 12


def ev(task_id: str, attempt: int, state: str, ts_us: int, **info: object) -> dict:
    return {"task_id": task_id, "attempt": attempt, "state": state, "ts": ts_us, **info}


# One task retried after its worker died, one that failed, as the writers report them.
STREAM = [
    ev(T1, 0, PENDING, 1_000_000, name="f", job="01", type=events.NORMAL_TASK),
    ev(T1, 0, RUNNING, 1_200_000, node="n1", pid=11),
    ev(T1, 1, PENDING, 2_000_000),  # the agent requeued it: no name
    ev(T1, 1, FINISHED, 2_900_000, node="n2", pid=22, start=2_100_000, end=2_800_000),
    ev(T2, 0, PENDING, 1_500_000, name="g", job="01"),
    ev(T2, 0, FAILED, 1_900_000, node="n1", pid=11, start=1_600_000, end=1_700_000,
       error="ValueError"),
]


def test_one_row_per_attempt_oldest_first() -> None:
    rows = events.task_rows(STREAM)
    assert [(r["task_id"], r["attempt_number"], r["state"]) for r in rows] == [
        (T1, 0, FAILED),  # followed by a retry and no end of its own: its worker died
        (T2, 0, FAILED), (T1, 1, FINISHED)]
    first, failed, retry = rows
    assert first["start_time_ms"] == 1_200 and first["end_time_ms"] is None
    assert first["creation_time_ms"] == 1_000 and first["node_id"] == "n1"
    assert retry["name"] == retry["func_or_class_name"] == "f"  # from its first attempt
    assert (retry["start_time_ms"], retry["end_time_ms"], retry["worker_pid"]) == (2_100, 2_800, 22)
    assert failed["error_type"] == "ValueError" and failed["job_id"] == "01"


def test_order_and_duplicates_in_the_stream_change_nothing() -> None:
    expected = events.task_rows(STREAM)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = STREAM + rng.sample(STREAM, 3)  # a batch sent twice after a lost reply
        rng.shuffle(shuffled)
        assert events.task_rows(shuffled) == expected


@pytest.mark.parametrize("broken", [
    {"task_id": T1, "attempt": 0, "state": RUNNING},  # no ts
    {"task_id": T1, "attempt": "first", "state": RUNNING, "ts": 1},
    {"attempt": 0, "state": RUNNING, "ts": 1},
    {"task_id": T1, "attempt": 0, "state": RUNNING, "ts": None},
])
def test_malformed_events_are_skipped(broken: dict) -> None:
    assert events.task_rows([*STREAM, broken]) == events.task_rows(STREAM)


def test_a_state_never_goes_back() -> None:
    rows = events.task_rows([ev(T1, 0, FINISHED, 3, end=3), ev(T1, 0, RUNNING, 2), ev(T1, 0, PENDING, 1)])
    assert [r["state"] for r in rows] == [FINISHED]


def test_summary_counts_each_tasks_latest_attempt() -> None:
    rows = events.task_rows([*STREAM, ev("cc" * 12, 0, RUNNING, 5, name="A", type=events.ACTOR_CREATION_TASK),
                             ev("dd" * 12, 0, FINISHED, 6, name="A.m", type=events.ACTOR_TASK)])
    cluster = events.summarize(rows)["cluster"]
    assert cluster["total_tasks"] == 4
    assert cluster["total_actor_tasks"] == 1 and cluster["total_actor_scheduled"] == 1
    summary = cluster["summary"]
    assert summary["f"]["state_counts"] == {FINISHED: 1}  # attempt 0's FAILED is not counted
    assert summary["g"]["state_counts"] == {FAILED: 1}
    assert summary["A"]["type"] == events.ACTOR_CREATION_TASK
    assert [r["attempt_number"] for r in events.latest_attempts(rows) if r["task_id"] == T1] == [1]


def test_the_trace_has_the_attempts_that_ran_to_their_end() -> None:
    trace = events.chrome_trace(events.task_rows(STREAM), {"n2": "10.0.0.2 n2"})
    assert [(t["args"]["task_id"], t["args"]["attempt_number"]) for t in trace] == [(T2, 0), (T1, 1)]
    failed, finished = trace
    assert (failed["ts"], failed["dur"], failed["cname"]) == (1_600_000, 100_000, "terrible")
    assert finished["cname"] == "rail_response" and finished["ph"] == "X"
    assert finished["pid"] == "Node 10.0.0.2 n2" and failed["pid"] == "Node n1"  # no label: the id
    assert finished["tid"] == "worker 22" and finished["cat"] == "task::f"


def test_a_batch_drops_running_events_of_attempts_that_ended_in_it() -> None:
    buffer = events.EventBuffer()
    for e in (ev(T1, 0, RUNNING, 1), ev(T1, 0, FINISHED, 2, start=1, end=2),
              ev(T1, 1, RUNNING, 3), ev(T2, 0, RUNNING, 4)):
        buffer.add(e)
    assert len(buffer) == 4
    assert [(e["task_id"], e["attempt"], e["state"]) for e in buffer.drain()] == [
        (T1, 0, FINISHED), (T1, 1, RUNNING), (T2, 0, RUNNING)]
    assert len(buffer) == 0 and buffer.drain() == []


def test_a_start_becomes_a_running_event_only_if_it_still_runs_at_the_drain() -> None:
    """started/ended: what still runs at a drain gets its RUNNING event there, once; what
    ends first gets only its end, with its start counted in the task counters."""
    buffer = events.EventBuffer()
    buffer.started(T1, 0, "f", "01", "n1", 7, 100)
    buffer.started(T2, 1, "A.m", "01", "n1", 7, 110, actor_id="ac")
    counts: dict[str, int] = {}
    drained = buffer.drain(counts)
    assert [(e["task_id"], e["state"], e["ts"]) for e in drained] == [(T1, RUNNING, 100), (T2, RUNNING, 110)]
    assert drained[1]["type"] == events.ACTOR_TASK and drained[1]["actor_id"] == "ac"
    assert "type" not in drained[0] and counts == {"started f": 1, "started A.m": 1}
    assert len(buffer) == 0 and buffer.drain() == []  # made once
    buffer.ended(T1, 0, 150, None, failed=False)
    buffer.started(T1, 1, "f", "01", "n1", 7, 160)
    buffer.ended(T1, 1, 170, "Traceback ...", failed=True)
    buffer.ended(T2, 9, 180, None, failed=False)  # never started here: nothing
    counts = {}
    drained = buffer.drain(counts)
    assert [(e["attempt"], e["state"], e["start"], e["end"]) for e in drained] == [
        (0, FINISHED, 100, 150), (1, FAILED, 160, 170)]
    assert drained[1]["tb"] == "Traceback ..." and drained[1]["error"] == "TASK_EXECUTION_EXCEPTION"
    assert counts == {"finished f": 1, "failed f": 1, "started f": 1}  # attempt 1's start, with its end
    assert len(buffer) == 0  # T2 attempt 1 still runs, its RUNNING event made: nothing due


def test_submitted_events_name_the_kind_of_task() -> None:
    task = events.submitted(QueueEntry(T1, "f", 0, _task_spec()), "01")
    assert (task["state"], task["type"], task["attempt"], task["job"]) == (
        PENDING, events.NORMAL_TASK, 0, "01")
    assert task["name"] == "f" and "actor_id" not in task  # None values are left out
    creation = events.submitted(QueueEntry(T2, "A.__init__", 2, _actor_spec(), kind="actor"), None)
    assert (creation["type"], creation["actor_id"], creation["attempt"]) == (
        events.ACTOR_CREATION_TASK, T2, 2)
    assert "job" not in creation


def _task_spec() -> TaskSpec:
    return TaskSpec(fn_id="f" * 40, args=b"", num_returns=1, owner=T1[:8], job_id="01")


def _actor_spec() -> ActorSpec:
    return ActorSpec(fn_id="c" * 40, args=b"", owner=T2[:8], job_id="01", class_name="A")


# ---- filters (`list_tasks(filters=...)`, `taskmesh list --filter`) --------------------------


@pytest.mark.parametrize(("text", "parsed"), [
    ("state=RUNNING", ("state", "=", "RUNNING")),
    (" name != f ", ("name", "!=", "f")),
    ("error_type=", ("error_type", "=", "")),
    ("args=a=b", ("args", "=", "a=b")),
])
def test_filters_parse_as_the_cli_writes_them(text: str, parsed: tuple) -> None:
    assert parse_filter(text) == parsed


@pytest.mark.parametrize("bad", ["state", "=RUNNING", "!=x", ""])
def test_a_filter_without_a_key_or_predicate_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE or KEY!=VALUE"):
        parse_filter(bad)


def test_filters_match_every_one_and_states_ignore_case() -> None:
    rows = events.task_rows(STREAM)
    assert [r["task_id"] for r in apply_filters(rows, [("state", "=", "failed")])] == [T1, T2]
    assert apply_filters(rows, [("state", "=", FAILED), ("name", "!=", "f")]) == [rows[1]]
    assert apply_filters(rows, [("worker_pid", "=", "22")]) == [rows[2]]  # compared as text
    assert apply_filters(rows, [("end_time_ms", "=", "")]) == [rows[0]]  # None reads as ""
    assert apply_filters(rows, None) == rows
    with pytest.raises(ValueError, match="Unsupported filter predicate '>'"):
        apply_filters(rows, [("state", ">", "A")])
    with pytest.raises(ValueError, match="not supported. Supported keys"):
        apply_filters(rows, [("colour", "=", "red")], columns=list(rows[0]))
    with pytest.raises(ValueError, match="must be a \\(key, predicate, value\\) tuple"):
        apply_filters(rows, ["state=RUNNING"])  # type: ignore[list-item]
