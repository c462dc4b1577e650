"""Objects across a real network: two node agents, each in a Linux network namespace with
an address of its own, and a task on one reading a large array that a task on the other
made. Two agents on one host share the loopback interface; here the only way between them
is IP routing through the host, so the object's bytes must leave the producing node's
object-transfer server as TCP traffic on its namespace address.

Needs root (creating namespaces and links); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest

import taskmesh
from conftest import assert_no_leaked_children
from netns import NamespacePair
from taskmesh import security
from taskmesh.objects import shm as _shm
from taskmesh.store import Store
from taskmesh.workers import launch
from taskmesh.workers import process as _process

ARRAY_LEN = 2_500_000  # int64: 20 MB, far above the inline limit, so it lives in shared memory
AGENT_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

pytestmark = [pytest.mark.netns, pytest.mark.cluster]


@dataclass
class NetnsCluster:
    """Redis on the host plus one node agent per namespace."""

    pair: NamespacePair
    url: str  # the driver's address for Redis (host loopback)
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)  # node id -> agent
    started: list[str] = field(default_factory=list)


def start_agent_in_namespace(pair: NamespacePair, i: int, redis_port: int,
                             resources: dict[str, float], log_path: Path,
                             password: str) -> tuple[subprocess.Popen, str]:
    """Run `taskmesh worker` inside namespace i, registered under the namespace's address,
    reaching Redis at the host side of its own link (another machine's address to it, so
    Redis needs a password: agents refuse an open one there)."""
    return launch.start_agent(
        f"redis://:{password}@{pair.host_ip(i)}:{redis_port}", num_cpus=2, resources=resources,
        log_path=log_path, fate_share=True, timeout_s=AGENT_START_TIMEOUT_S,
        node_ip=pair.ns_ip(i), command_prefix=pair.exec_prefix(i))


@contextlib.contextmanager
def netns_cluster(pair: NamespacePair, tmp_path: Path) -> Iterator[NetnsCluster]:
    """Redis listening on loopback and on the host side of both links, node A (resource
    "a") in namespace 1 and node B (resource "b") in namespace 2. On exit the agents and
    Redis are stopped, and nothing they started may be left: no process, no shared memory."""
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    # Reachable from the driver and from both namespaces, not from every interface of the
    # host: a later --bind overrides the loopback one start_redis passes.
    password = security.generate_password()
    server = launch.start_redis(
        data_dir=tmp_path / "redis", password=password,
        extra_args=("--bind", "127.0.0.1", pair.host_ip(1), pair.host_ip(2)))
    cluster = NetnsCluster(pair, server.url)
    try:
        for i, resource in ((1, "a"), (2, "b")):
            proc, node_id = start_agent_in_namespace(
                pair, i, server.port, {resource: 4}, tmp_path / f"agent-{resource}.log", password)
            cluster.agents[node_id] = proc
            cluster.started.append(node_id)
        yield cluster
    finally:
        _process.stop_processes([p.pid for p in cluster.agents.values()], timeout_s=STOP_TIMEOUT_S)
        server.stop()
    assert_no_leaked_children(before)
    leftover = [d for d in map(_shm.node_dir, cluster.started) if d.exists()]
    assert not leftover, f"shared memory left behind: {leftover}"


def test_an_object_crosses_the_network_between_namespaced_nodes(
        pair: NamespacePair, tmp_path: Path) -> None:
    with netns_cluster(pair, tmp_path) as cluster:
        node_a, node_b = cluster.started
        store = Store(cluster.url)
        taskmesh.init(address=cluster.url)
        try:
            # Each node registered the address of its own namespace, where its
            # object-transfer server listens.
            for node, i in ((node_a, 1), (node_b, 2)):
                assert store.redis.hget(store.keys.node(node), "ip") == pair.ns_ip(i).encode()

            @taskmesh.remote(resources={"a": 1})
            def make(n):
                return np.arange(n, dtype=np.int64)

            @taskmesh.remote(resources={"b": 1})
            def total(x):
                return int(x.sum()), x.flags.writeable, taskmesh.get_runtime_context().get_node_id()

            ref = make.remote(ARRAY_LEN)
            ready, _ = taskmesh.wait([ref], timeout=30)
            assert ready, "the producing task did not finish"
            oid = ref.hex()
            meta = store.redis.hgetall(store.keys.obj(oid))
            assert meta[b"kind"] == b"shm" and meta[b"data"].split()[1] == node_a.encode()
            size = int(meta[b"size"])
            assert size >= ARRAY_LEN * 8
            assert not _shm.ShmStore.of_node(node_b).contains(oid)

            # The host side of A's link receives what A sends, the host side of B's link
            # carries what the host forwards to B: the object must show up on both.
            a_sent_before, _ = pair.link_bytes(1)
            _, b_got_before = pair.link_bytes(2)
            result = taskmesh.get(total.remote(ref), timeout=60)
            a_sent = pair.link_bytes(1)[0] - a_sent_before
            b_got = pair.link_bytes(2)[1] - b_got_before

            assert result == (ARRAY_LEN * (ARRAY_LEN - 1) // 2, False, node_b)
            assert a_sent >= size, f"node A's link sent only {a_sent} bytes of {size}"
            assert b_got >= size, f"node B's link received only {b_got} bytes of {size}"
            assert store.redis.smembers(store.keys.obj_loc(oid)) == {node_b.encode()}
            assert _shm.ShmStore.of_node(node_b).contains(oid)
        finally:
            taskmesh.shutdown()
            store.close()
