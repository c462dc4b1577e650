"""Redis Sentinel: `redis+sentinel://` addresses, and a cluster that survives the loss of
its primary (kill -9 under load) by following the replica the Sentinels promote."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

import taskmesh
from conftest import TestCluster, assert_no_leaked_children
from taskmesh.store import Store, connection
from taskmesh.workers import launch

MASTER = "tm-primary"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("redis+sentinel://h1:1,h2:2/mymaster", "redis+sentinel://h1:1,h2:2/mymaster/0"),
        ("redis+sentinel://h/m/3", "redis+sentinel://h:26379/m/3"),
        ("redis+sentinel://:s3cret@h:1,[::1]:2/m", "redis+sentinel://:s3cret@h:1,[::1]:2/m/0"),
        ("redis+sentinel://u:pw@h:1/m?sentinel_password=x",
         "redis+sentinel://u:pw@h:1/m/0?sentinel_password=x"),
    ],
)
def test_sentinel_address_canonicalization(given: str, expected: str) -> None:
    assert connection.canonicalize_address(given) == expected


@pytest.mark.parametrize("bad", [
    "redis+sentinel://h:1", "redis+sentinel:///m", "redis+sentinel://h:x/m", "redis+sentinel://h:1/m/x",
    "redis+sentinel://h:1/m/0/extra", "redis+sentinel://h:1,/m", "redis+sentinel://h:1/m?db=2",
    "redis+sentinel://h:99999/m", "redis+sentinel://[::1/m",
])
def test_bad_sentinel_addresses_are_rejected_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="Invalid address 'redis\\+sentinel:"):
        connection.canonicalize_address(bad)


def test_sentinel_passwords_are_masked() -> None:
    masked = connection.mask_password("redis+sentinel://u:s3cret@h:1,h:2/m/0?sentinel_password=t0p")
    assert masked == "redis+sentinel://u:***@h:1,h:2/m/0?sentinel_password=***"
    with pytest.raises(ValueError) as info:
        connection.canonicalize_address("redis+sentinel://:s3cret@h:1")
    assert "s3cret" not in str(info.value)


@taskmesh.remote
def square(x: int) -> int:
    return x * x


@taskmesh.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


class _Submitter(threading.Thread):
    """Submits small tasks in batches until stopped, remembering every (input, ref)."""

    def __init__(self) -> None:
        super().__init__(name="submitter", daemon=True)
        self.submitted: list[tuple[int, taskmesh.ObjectRef]] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop_event.is_set():
                self.submitted += [(j, square.remote(j)) for j in range(i, i + 10)]
                i += 10
                time.sleep(0.02)
        except Exception as e:  # surfaced by the test
            self.error = e


def _master_port(sentinel: launch.RedisServer) -> int | None:
    try:
        with redis.Redis.from_url(sentinel.url, socket_timeout=0.5) as client:
            reply = client.sentinel_get_master_addr_by_name(MASTER)
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    return int(reply[1]) if reply else None


def _wait_for_promotion(sentinels: list[launch.RedisServer], replica_port: int, timeout_s: float) -> float:
    """Seconds until every Sentinel names the replica as the primary."""
    start = time.monotonic()
    while any(_master_port(s) != replica_port for s in sentinels):
        assert time.monotonic() - start < timeout_s, "the Sentinels did not promote the replica"
        time.sleep(0.05)
    return time.monotonic() - start


def _wait_submitted(submitter: _Submitter, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(submitter.submitted) < count:
        assert submitter.error is None, submitter.error
        assert time.monotonic() < deadline, "tasks were not submitted in time"
        time.sleep(0.02)


@pytest.mark.sentinel
@pytest.mark.cluster
@pytest.mark.slow
def test_cluster_follows_the_promoted_replica_after_the_primary_is_killed(tmp_path: Path) -> None:
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    servers: list[launch.RedisServer] = []
    cluster: TestCluster | None = None
    submitter = _Submitter()
    try:
        primary = launch.start_redis(data_dir=tmp_path / "primary")
        servers.append(primary)
        replica = launch.start_replica(primary, data_dir=tmp_path / "replica")
        servers.append(replica)
        sentinels = launch.start_sentinels(primary, MASTER, data_dir=tmp_path)
        servers += sentinels
        url = connection.canonicalize_address(
            "redis+sentinel://" + ",".join(f"{s.host}:{s.port}" for s in sentinels) + f"/{MASTER}")
        cluster = TestCluster(url, tmp_path / "logs")
        cluster.add_node(num_cpus=2)
        cluster.add_node(num_cpus=2)
        taskmesh.init(address=url)
        counter = Counter.remote()
        assert taskmesh.get(counter.add.remote(1), timeout=30) == 1
        submitter.start()
        _wait_submitted(submitter, 100)
        # Results acknowledged before the kill: with WAIT they are on the replica too.
        early = submitter.submitted[:50]
        assert taskmesh.get([r for _, r in early], timeout=30) == [i * i for i, _ in early]

        primary.proc.kill()
        primary.proc.wait()
        _wait_for_promotion(sentinels, replica.port, timeout_s=30)
        _wait_submitted(submitter, len(submitter.submitted) + 100)
        submitter.stop_event.set()
        submitter.join(timeout=30)
        assert submitter.error is None, submitter.error

        done = submitter.submitted
        assert len(done) >= 200
        assert taskmesh.get([r for _, r in done], timeout=120) == [i * i for i, _ in done]
        assert taskmesh.get(square.remote(12), timeout=30) == 144
        assert taskmesh.get(counter.add.remote(1), timeout=60) == 2
        assert Store(url).redis.connection_pool.get_master_address()[1] == replica.port
    finally:
        submitter.stop_event.set()
        taskmesh.shutdown()
        if cluster is not None:
            cluster.stop()
        for server in reversed(servers):
            server.stop()
        assert_no_leaked_children(before)
