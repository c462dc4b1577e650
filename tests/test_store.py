"""The key schema and the Lua scripts, on the real server."""

from __future__ import annotations

import re

import msgpack
import pytest
import redis

from conftest import done_notices
from taskmesh.objects import KIND_VALUE, new_owner_tag, new_task_id, object_id
from taskmesh.store import GROUP, Completion, Keys, Release, Store
from taskmesh.store import keys as store_mod


def _documented_patterns() -> set[str]:
    doc = store_mod.__doc__ or ""
    return {m.group(1) for m in re.finditer(r"^\| (tm:\S+)\s+\|", doc, re.MULTILINE)}


def test_every_key_builder_matches_the_documented_table() -> None:
    keys = Keys()
    built = {
        keys.node("{node_id}"), keys.nodes_alive(), keys.monitor(), keys.deadletter(), keys.drivers(),
        keys.fn("{fn_id}"), keys.shapes(),
        keys.queue("{shape}"), keys.done("owner"), keys.fence("owner"), keys.job("{job_id}"), keys.jobs(),
        keys.jobs_ended(), keys.chan_job_end(),
        keys.chan_shapes(), keys.chan_cancel(), keys.chan_log("{job_id}"), keys.actor("actor_id"),
        keys.actor_calls("actor_id"), keys.named("{namespace}"), keys.job_actors("{job_id}"),
        keys.chan_node("{node_id}"), keys.node_actors("{node_id}"), keys.nodes_lost(),
        keys.node_procs("{node_id}"),
        keys.obj("abcdefgh0123").replace("abcdefgh0123", "{object_id}").replace("abcdefgh", "owner"),
        keys.obj_loc("abcdefgh0123").replace("abcdefgh0123", "{object_id}").replace("abcdefgh", "owner"),
        keys.obj_refs("abcdefgh0123").replace("abcdefgh0123", "{object_id}").replace("abcdefgh", "owner"),
        keys.obj_nested("abcdefgh0123").replace("abcdefgh0123", "{object_id}").replace("abcdefgh", "owner"),
        keys.borrows("{tag}").replace("{{tag}}", "{tag}"),
        keys.gen_consumed("abcdefgh0123").replace("abcdefgh0123", "{task_id}").replace("abcdefgh", "owner"),
        keys.transfer_secret(), keys.versions(),
        keys.events(), keys.logs("{job_id}"), keys.metrics(), keys.metric("{name}"),
        keys.package("{digest}"), keys.task_counts(), keys.actors(), keys.nodes_all(),
        keys.node_queue("{node_id}"), keys.bundle_queue("{pg_id}", "{bundle}"), keys.pinned(),
        keys.pg("{pg_id}"), keys.pgs(), keys.pgs_pending(), keys.named_pg("{namespace}"),
        keys.job_pgs("{job_id}"), keys.node_reserved("{node_id}"),
        keys.submission("{submission_id}"), keys.submission_logs("{submission_id}"),
        keys.submission_drivers("{submission_id}"), keys.submissions(),
    }
    assert built == _documented_patterns()


def test_object_keys_carry_the_owner_hash_tag() -> None:
    owner = new_owner_tag()
    oid = object_id(new_task_id(owner), 1)
    keys = Keys(prefix="c1")
    assert keys.obj(oid) == f"c1:{{{owner}}}:obj:{oid}"
    assert keys.done(owner) == f"c1:{{{owner}}}:done"


def _completion(owner: str, task_id: str, value: bytes) -> Completion:
    oid = object_id(task_id, 1)
    notice = msgpack.packb([task_id, [[oid, KIND_VALUE, value]]])
    return Completion(owner, notice, ((oid, KIND_VALUE, value),))


def test_complete_script_stores_once_and_notifies_once(store: Store) -> None:
    owner = new_owner_tag()
    task_id = new_task_id(owner)
    store.complete_tasks([_completion(owner, task_id, b"first")], {})
    store.complete_tasks([_completion(owner, task_id, b"second")], {})  # a late retry
    assert store.get_objects([object_id(task_id, 1)]) == [(KIND_VALUE, b"first")]
    assert len(done_notices(store, owner)) == 1
    assert store.redis.hget(store.keys.obj(object_id(task_id, 1)), "size") == b"5"


def test_complete_acks_and_deletes_the_queue_entry(store: Store) -> None:
    store.register_shape("CPU=1")
    store.submit_tasks([("CPU=1", {"task": "t", "attempt": 0})])
    leased = store.lease(store.redis, "node-a", {"CPU=1": 10}, None)
    assert len(leased) == 1
    owner = new_owner_tag()
    store.complete_tasks([_completion(owner, new_task_id(owner), b"v")],
                         {leased[0].queue: [leased[0].entry_id]})
    queue = store.keys.queue("CPU=1")
    assert store.redis.xlen(queue) == 0
    assert store.redis.xpending(queue, GROUP)["pending"] == 0


def test_a_batch_round_trip_acks_and_leases_the_next_batch(store: Store) -> None:
    """complete_tasks with then_lease (a worker under a grant): the results, the acks of
    many entries (one argument) and the next lease in one round_trip; raw replies."""
    store.register_shape("CPU=1")
    store.submit_tasks([("CPU=1", {"task": f"t{i}", "attempt": 0}) for i in range(5)])
    first = store.lease(store.redis, "node-a:1", {"CPU=1": 3}, None)
    owner = new_owner_tag()
    tasks = [new_task_id(owner) for _ in first]
    nxt = store.complete_tasks([_completion(owner, t, b"v") for t in tasks],
                               {first[0].queue: [e.entry_id for e in first]},
                               then_lease=("CPU=1", "node-a:1", 10))
    assert [e.fields[b"task"] for e in nxt] == [b"t3", b"t4"]  # a dict, as redis-py gives
    queue = store.keys.queue("CPU=1")
    assert store.redis.xlen(queue) == 2 and store.redis.xpending(queue, GROUP)["pending"] == 2
    assert len(done_notices(store, owner)) == 3
    store.redis.script_flush()  # a restarted Redis lost the scripts: loaded, run again once
    assert store.complete_tasks([], {queue: [e.entry_id for e in nxt]},
                                then_lease=("CPU=1", "node-a:1", 10)) == []
    assert store.redis.xlen(queue) == 0 and store.redis.xpending(queue, GROUP)["pending"] == 0


def test_round_trip_returns_replies_in_order_and_errors_as_values(store: Store) -> None:
    from taskmesh.store.connection import round_trip

    replies = round_trip(store.redis, [("SET", "k", 1.5), ("INCR", "k"), ("GET", "k"),
                                       ("SCRIPT EXISTS", "0" * 40)])
    assert replies[0] == b"OK" and replies[2] == b"1.5" and replies[3] == [0]
    assert isinstance(replies[1], redis.ResponseError)  # not an integer: the others still read
    assert round_trip(store.redis, [("PING",)]) == [b"PONG"]  # the connection is still in step
    with pytest.raises(TypeError):
        round_trip(store.redis, [("SET", "k", True)])  # refused before anything is sent
    assert store.redis.get("k") == b"1.5"


def test_round_trip_drops_a_failed_connection(store: Store) -> None:
    from taskmesh.store.connection import round_trip

    with pytest.raises(redis.ConnectionError):  # its own connection is closed under it
        round_trip(store.redis, [("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"), ("PING",)])
    assert round_trip(store.redis, [("PING",)]) == [b"PONG"]  # a new connection from the pool


def test_requeue_is_atomic_and_bumps_the_attempt(store: Store) -> None:
    store.register_shape("CPU=1")
    store.submit_tasks([("CPU=1", {"task": "t", "attempt": 0})])
    (entry,) = store.lease(store.redis, "node-a", {"CPU=1": 1}, None)
    store.requeue(entry.queue, entry.entry_id, {**entry.fields, b"attempt": b"1"})
    queue = store.keys.queue("CPU=1")
    assert store.redis.xpending(queue, GROUP)["pending"] == 0
    (again,) = store.lease(store.redis, "node-b", {"CPU=1": 1}, None)
    assert again.fields[b"attempt"] == b"1"
    assert again.entry_id != entry.entry_id


def test_register_shape_announces_new_shapes_only(store: Store) -> None:
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.keys.chan_shapes())
    pubsub.get_message(timeout=1)
    store.register_shape("CPU=2")
    store.register_shape("CPU=2")
    messages = [pubsub.get_message(timeout=0.5) for _ in range(2)]
    assert [m["data"] for m in messages if m] == [b"CPU=2"]
    assert store.shapes() == ["CPU=2"]
    pubsub.close()


def test_queue_stats_counts_queued_and_running(store: Store) -> None:
    store.register_shape("CPU=1")
    store.submit_tasks([("CPU=1", {"task": str(i)}) for i in range(5)])
    store.lease(store.redis, "node-a", {"CPU=1": 2}, None)
    assert store.queue_stats() == {"CPU=1": (3, 2)}


def test_unreachable_redis_raises_store_unavailable() -> None:
    from taskmesh.exceptions import StoreUnavailableError
    from taskmesh.workers.launch import free_port

    dead = Store(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.2)
    with pytest.raises(StoreUnavailableError):
        dead.ping()
    with pytest.raises(ConnectionError):  # also a ConnectionError, for generic handlers
        dead.shapes()


def test_lease_takes_at_most_each_shapes_count(store: Store) -> None:
    for shape in ("CPU=1", "CPU=2"):
        store.register_shape(shape)
        store.submit_tasks([(shape, {"task": f"{shape}-{i}"}) for i in range(5)])
    leased = store.lease(store.redis, "node-a", {"CPU=1": 4, "CPU=2": 2}, 100)
    by_queue = {q: sum(1 for e in leased if e.queue == q)
                for q in (store.keys.queue("CPU=1"), store.keys.queue("CPU=2"))}
    assert by_queue == {store.keys.queue("CPU=1"): 4, store.keys.queue("CPU=2"): 2}


def test_blocking_lease_over_several_shapes_never_exceeds_a_share(store: Store) -> None:
    store.register_shape("CPU=1")
    store.register_shape("CPU=2")
    store.submit_tasks([("CPU=2", {"task": str(i)}) for i in range(3)])
    # Non-blocking pass finds CPU=2 entries; with an empty CPU=2 queue the blocking
    # read would use min(counts) = 1.
    leased = store.lease(store.redis, "node-a", {"CPU=1": 4, "CPU=2": 1}, 100)
    assert len(leased) == 1


def test_a_queue_whose_group_is_gone_loses_nothing_another_queue_delivered(store: Store) -> None:
    """Redis lost a queue (its data, or the key deleted): the shapes' reads of one lease
    go in one pipeline, and the entries the other queue delivered (pending for this
    consumer from then on) are returned, not dropped with the missing group's NOGROUP;
    the group is made again. Settling a consumer of the lost queue finds nothing."""
    for shape in ("CPU=1", "CPU=2"):
        store.register_shape(shape)
    store.submit_tasks([("CPU=2", {"task": str(i)}) for i in range(3)])
    store.redis.delete(store.keys.queue("CPU=1"))
    leased = store.lease(store.redis, "node-a", {"CPU=1": 4, "CPU=2": 2}, None)
    assert [e.fields[b"task"] for e in leased] == [b"0", b"1"]
    assert store.redis.xinfo_groups(store.keys.queue("CPU=1"))  # made again
    store.redis.delete(store.keys.queue("CPU=1"))
    assert store.pending_ids("CPU=1", "node-a:7", 10) == []
    assert store.drop_consumer("CPU=1", "node-a:7")


def test_requeueing_the_same_entry_twice_adds_it_once(store: Store) -> None:
    store.register_shape("CPU=1")
    store.submit_tasks([("CPU=1", {"task": "t", "attempt": 0})])
    (entry,) = store.lease(store.redis, "node-a", {"CPU=1": 1}, None)
    for _ in range(2):
        store.requeue(entry.queue, entry.entry_id, {**entry.fields, b"attempt": b"1"})
    assert store.redis.xlen(store.keys.queue("CPU=1")) == 1


def test_release_frees_an_object_only_when_its_owner_and_every_holder_let_go(store: Store) -> None:
    owner = new_owner_tag()
    inner, outer = object_id(new_task_id(owner), 0), object_id(new_task_id(owner), 0)
    store.put_object(inner, b"shm", b"1048576 nodeA", 1048576)
    store.redis.sadd(store.keys.obj_loc(inner), "nodeB")
    store.put_object(outer, KIND_VALUE, b"x", 1, nested=[inner])  # outer holds inner
    borrower = "p:" + new_owner_tag()

    assert store.release([Release(inner, borrower, 1), Release(inner, "owner", -1)]) == []
    assert store.redis.smembers(store.keys.borrows(borrower[2:])) == {inner.encode()}
    assert store.release([Release(inner, borrower, -1)]) == []  # outer still holds it
    assert store.redis.hgetall(store.keys.obj_refs(inner)) == {f"o:{outer}".encode(): b"1"}

    (freed,) = store.release([Release(outer, "owner", -1)])
    assert (freed.object_id, freed.nodes, freed.nested) == (outer, (), (inner,))
    (freed,) = store.release([Release(inner, f"o:{outer}", -1)])
    assert (freed.object_id, freed.nodes) == (inner, ("nodeA", "nodeB"))
    assert not store.redis.keys("*obj*") and not store.redis.smembers(store.keys.borrows(borrower[2:]))


def test_a_dead_process_holds_are_found_and_dropped_whatever_their_count(store: Store) -> None:
    dead, owner = new_owner_tag(), new_owner_tag()
    borrowed = object_id(new_task_id(owner), 0)
    own = object_id(new_task_id(dead), 0)
    store.put_object(borrowed, KIND_VALUE, b"b", 1)
    store.put_object(own, KIND_VALUE, b"o", 1)
    store.release([Release(borrowed, f"p:{dead}", 1), Release(borrowed, f"p:{dead}", 1)])
    ops = store.process_holds(dead)
    assert set(ops) == {Release(borrowed, f"p:{dead}", 0), Release(own, "owner", -1)}
    freed = store.release(ops)
    assert [f.object_id for f in freed] == [own]  # the borrowed one still has its owner
    assert not store.redis.exists(store.keys.obj_refs(borrowed))
