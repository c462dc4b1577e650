"""A seeded chaos run: a workload of tasks, actors and objects runs on a local cluster of
node agents while a killer sends kill -9 to worker processes, node agents and the Redis
server (restarted from its append-only file on the same port).

The point is to check the failure handling promised in the README under real process
deaths, not under mocks: every task with retries left completes with the right value, no
`get` hangs, and once the killer stops nothing is left behind (processes, shared memory,
Redis keys of dead nodes or freed objects). Objects whose every copy was on a killed node
are made again from their lineage; one that could not be (ObjectLostError) is forgiven
only if a node was lost since its round began, and counted apart.

Every choice of the killer (what to kill, when) comes from `random.Random(seed)`, so a
seed replays the same sequence of decisions; what each kill hits in the workload still
depends on timing.

    python -m taskmesh.tools.chaos --minutes 5 --seed 7
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import psutil

import taskmesh
from taskmesh._base.wire import QueueEntry, WireError
from taskmesh.exceptions import GetTimeoutError, ObjectLostError, RayError
from taskmesh.objects import shm as _shm
from taskmesh.store import Store, retry_transient
from taskmesh.workers import launch, monitor
from taskmesh.workers import process as _process

NODE_TIMEOUT_MS = 2_000  # the monitor declares a killed agent dead after this silence
GET_TIMEOUT_S = 90.0  # far above any recovery time: reaching it means a hang
ARRAY_LEN = 40_000  # float64: 320 KB, a shared-memory object
MIN_LIVE_AGENTS = 2
KILL_WEIGHTS = {"worker": 6, "agent": 2, "redis": 1}
SETTLE_TIMEOUT_S = 60.0
SQUARES = 16  # per round, as are the following
MADE_ARRAYS = 4
PUT_READERS = 2
ACTOR_CALLS = 6
TASKS_PER_ROUND = SQUARES + MADE_ARRAYS + PUT_READERS  # checked tasks: squares and sums


@dataclass
class Report:
    """What a chaos run did and what it found; `ok` says whether it found nothing wrong."""

    seed: int
    duration_s: float = 0.0
    kills: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    tasks_checked: int = 0
    actor_calls_checked: int = 0
    executions: int = 0
    retries_observed: int = 0
    actor_restarts: int = 0
    agents_exited: int = 0
    lost_with_node: int = 0
    wrong: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    leaked_keys: list[str] = field(default_factory=list)
    nodes_started: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.wrong or self.hung or self.leaked_keys)

    def summary(self) -> str:
        kills = ", ".join(f"{kind} {self.kills[kind]}" for kind in KILL_WEIGHTS)
        lines = [
            f"seed {self.seed}, {self.duration_s:.1f} s, {self.rounds} rounds",
            f"kills survived: {kills} (agents declared dead and replaced: {self.agents_exited})",
            (f"tasks checked: {self.tasks_checked} (executions {self.executions}, "
             f"retries observed {self.retries_observed})"),
            f"actor calls checked: {self.actor_calls_checked} (actor restarts {self.actor_restarts})",
            f"lost with their node (not made again): {self.lost_with_node}",
            f"wrong: {len(self.wrong)}, hung: {len(self.hung)}, leaked keys: {len(self.leaked_keys)}",
        ]
        lines += [f"  wrong: {w}" for w in self.wrong[:10]]
        lines += [f"  hung: {h}" for h in self.hung[:10]]
        lines += [f"  leaked: {k}" for k in self.leaked_keys[:10]]
        return "\n".join(lines)


class ChaosCluster:
    """A persistent Redis and node agents started by this process, which can be killed
    and replaced; remembers every node it ever had so the caller can check for leftovers."""

    def __init__(self, work_dir: Path, num_cpus: float = 2):
        self.work_dir = work_dir
        self.num_cpus = num_cpus
        # Every process is spawned from this one long-lived thread: fate sharing uses
        # PR_SET_PDEATHSIG, which fires when the spawning *thread* ends, so a Redis or
        # agent started from the killer thread would die with it.
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-spawner")
        self.redis = self._start_redis(port=None)
        self.agents: dict[str, psutil.Popen] = {}
        self.started: list[str] = []
        self.lock = threading.Lock()

    def _start_redis(self, port: int | None) -> launch.RedisServer:
        # fsync on every write: a kill -9 must not lose what Redis acknowledged.
        return self.spawner.submit(
            launch.start_redis, data_dir=self.work_dir / "redis", port=port, persistent=True,
            extra_args=("--appendfsync", "always")).result()

    def add_agent(self) -> str:
        proc, node_id = self.spawner.submit(
            launch.start_agent, self.redis.url, num_cpus=self.num_cpus, fate_share=True,
            log_path=self.work_dir / f"agent-{len(self.started)}.log").result()
        with self.lock:
            self.agents[node_id] = psutil.Process(proc.pid)
            self.started.append(node_id)
        return node_id

    def kill_agent(self, node_id: str) -> None:
        """kill -9 the agent (its workers die with it), reap its shared memory as the next
        agent on this machine would, and start a replacement."""
        with self.lock:
            proc = self.agents.pop(node_id)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
        proc.wait()
        _shm.reap_dead_stores(_shm.default_spill_root())
        self.add_agent()

    def replace_exited(self) -> int:
        """Start a replacement for each agent that exited on its own (declared dead while
        Redis was away, it stops itself); returns how many."""
        with self.lock:
            gone = [(n, p) for n, p in self.agents.items() if not _running(p)]
            for node_id, _ in gone:
                self.agents.pop(node_id)
        for _, proc in gone:
            with contextlib.suppress(psutil.Error):
                proc.wait(timeout=5)  # reap it
            self.add_agent()
        return len(gone)

    def worker_pids(self, node_id: str) -> list[int]:
        with contextlib.suppress(psutil.Error, KeyError):
            children = self.agents[node_id].children()
            return sorted(c.pid for c in children if "taskmesh.workers.worker_main" in " ".join(c.cmdline()))
        return []

    def restart_redis(self, down_s: float) -> None:
        """kill -9 Redis and start it again from its append-only file on the same port."""
        port = self.redis.port
        self.redis.proc.kill()
        self.redis.proc.wait()
        time.sleep(down_s)
        self.redis = self._start_redis(port=port)

    def stop(self) -> None:
        with self.lock:
            pids = [p.pid for p in self.agents.values()]
            self.agents.clear()
        _process.stop_processes(pids, timeout_s=10)
        self.redis.stop()
        self.spawner.shutdown()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Killer:
    """Kills something every so often; every decision is drawn from the seeded generator
    so that a seed replays the same decisions."""

    def __init__(self, cluster: ChaosCluster, rng: random.Random, spared: str | None,
                 kinds: dict[str, int]):
        self.cluster = cluster
        self.rng = rng
        self.spared = spared  # the driver's own node: its puts live there
        self.kinds = kinds
        self.kills: Counter[str] = Counter()
        # Counted before the kill, not after the replacement is up: an object of the
        # dying node may be found lost before the replacement has registered.
        self.agent_kills_begun = 0
        self.agents_exited = 0  # declared dead (not killed) and stopped by themselves
        self.stopped = threading.Event()

    def agents_lost(self) -> int:
        """Agents killed (counted as the kill begins) or gone by themselves."""
        return self.agent_kills_begun + self.agents_exited

    def loop(self) -> None:
        """Runs in its own thread until `stopped` is set; an error ends it and reaches
        the run through the thread's future."""
        while not self.stopped.wait(self.rng.uniform(0.3, 1.5)):
            self.agents_exited += self.cluster.replace_exited()
            kind = self.rng.choices(list(self.kinds), weights=list(self.kinds.values()))[0]
            if getattr(self, f"_kill_{kind}")():
                self.kills[kind] += 1

    def _kill_worker(self) -> bool:
        node = self.rng.choice(sorted(self.cluster.agents))
        pids = self.cluster.worker_pids(node)
        index = self.rng.randrange(1 << 16)
        if not pids:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[index % len(pids)], signal.SIGKILL)
            return True
        return False

    def _kill_agent(self) -> bool:
        candidates = sorted(n for n in self.cluster.agents if n != self.spared)
        node = self.rng.choice(candidates) if candidates else None
        if node is None or len(self.cluster.agents) < MIN_LIVE_AGENTS:
            return False
        self.agent_kills_begun += 1
        self.cluster.kill_agent(node)
        return True

    def _kill_redis(self) -> bool:
        self.cluster.restart_redis(down_s=self.rng.uniform(0.1, 1.0))
        return True


# The workload. Each task appends its key to a log file when it starts, so a key seen
# twice is a retry the run observed (taskmesh does not show the attempt to the task).

def _note(log: str, key: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)


@taskmesh.remote(max_retries=-1)
def slow_square(log: str, key: str, i: int, sleep_s: float) -> int:
    _note(log, key)
    time.sleep(sleep_s)
    return i * i


@taskmesh.remote(max_retries=-1)
def make_array(log: str, key: str, offset: int) -> np.ndarray:
    _note(log, key)
    time.sleep(0.05)
    return np.arange(ARRAY_LEN, dtype=np.float64) + offset


@taskmesh.remote(max_retries=-1)
def array_sum(log: str, key: str, array: np.ndarray) -> float:
    _note(log, key)
    time.sleep(0.05)
    return float(array.sum())


def expected_sum(offset: int) -> float:
    return ARRAY_LEN * (ARRAY_LEN - 1) / 2 + ARRAY_LEN * offset


@taskmesh.remote(max_restarts=-1, max_task_retries=-1)
class Scaler:
    """Its answers depend only on the constructor's argument, which a restart replays,
    so they stay checkable across restarts (the instance's other state does not)."""

    def __init__(self, factor: int):
        self.factor = factor

    def apply(self, x: int) -> int:
        time.sleep(0.02)
        return self.factor * x


@dataclass
class Round:
    """The refs of one round of the workload and the values they must have."""

    number: int
    agent_kills_at_submit: int
    squares: list[tuple[Any, int]] = field(default_factory=list)
    sums: list[tuple[Any, float, str]] = field(default_factory=list)  # ref, value, what
    actor_calls: list[tuple[Any, int]] = field(default_factory=list)


def submit_round(number: int, log: str, rng: random.Random, scaler: Any, agent_kills: int) -> Round:
    """Tasks that sleep (so kills hit running tasks), large arrays made by one task and
    read by another, a large `put` read by tasks, and actor calls."""
    r = Round(number, agent_kills)
    for i in range(SQUARES):
        r.squares.append((slow_square.remote(log, f"{number}:sq:{i}", i, rng.uniform(0.01, 0.2)), i * i))
    for i in range(MADE_ARRAYS):
        offset = number * 100 + i
        made = make_array.remote(log, f"{number}:make:{i}", offset)
        r.sums.append((array_sum.remote(log, f"{number}:sum:{i}", made), expected_sum(offset),
                       f"array made by a task, round {number} #{i}"))
    put_offset = -number
    put_ref = taskmesh.put(np.arange(ARRAY_LEN, dtype=np.float64) + put_offset)
    for i in range(PUT_READERS):
        r.sums.append((array_sum.remote(log, f"{number}:put:{i}", put_ref), expected_sum(put_offset),
                       f"put array, round {number} #{i}"))
    for i in range(ACTOR_CALLS):
        r.actor_calls.append((scaler.apply.remote(number * 10 + i), 7 * (number * 10 + i)))
    return r


def check_round(r: Round, report: Report, agent_kills: Callable[[], int]) -> None:
    """Compare every result with its expected value; a lost object is forgiven only if
    an agent was killed since the round was submitted (it may have died with it)."""
    for ref, want in r.squares:
        report.tasks_checked += _check(ref, want, f"square round {r.number}", report, None)
    for ref, total, what in r.sums:
        report.tasks_checked += _check(ref, total, what, report,
                                       lambda: agent_kills() > r.agent_kills_at_submit)
    for ref, want in r.actor_calls:
        report.actor_calls_checked += _check(ref, want, f"actor call round {r.number}", report, None)


def _check(ref: Any, want: Any, what: str, report: Report,
           loss_forgiven: Callable[[], bool] | None) -> int:
    try:
        got = taskmesh.get(ref, timeout=GET_TIMEOUT_S)
    except GetTimeoutError:
        report.hung.append(f"{what}: no result after {GET_TIMEOUT_S:.0f} s")
        return 0
    except ObjectLostError as e:
        if loss_forgiven is not None and loss_forgiven():
            report.lost_with_node += 1
        else:
            report.wrong.append(f"{what}: lost with no node killed: {e!r}")
        return 0
    except RayError as e:  # every other taskmesh error is a failure the run reports
        report.wrong.append(f"{what}: {type(e).__name__}: {e}")
        return 0
    if got != want:
        report.wrong.append(f"{what}: got {got!r}, want {want!r}")
        return 0
    return 1


def leaked_keys(store: Store, live_nodes: set[str], dead_nodes: set[str], actor_ids: list[str]) -> list[str]:
    """Keys the cluster no longer needs once the driver has shut down and the monitor has
    settled the dead nodes: any object, the dead nodes' process and actor sets, the
    actors' call streams, nodes still waiting for recovery, queue entries left over."""
    keys = store.keys
    found = [_describe_object_key(store, k.decode())
             for k in store.redis.scan_iter(match=keys.all_objects(), count=1000)]
    for node in dead_nodes - live_nodes:
        found += [k for k in (keys.node_procs(node), keys.node_actors(node)) if store.redis.exists(k)]
    for actor_id in actor_ids:
        if store.redis.exists(keys.actor_calls(actor_id)):
            info = store.actor_info(actor_id)
            found.append(f"{keys.actor_calls(actor_id)} (actor {info.get('state')}, "
                         f"restarts {info.get('restarts')}, cause {info.get('death_cause')!r})")
    if store.redis.scard(keys.nodes_lost()):
        found.append(keys.nodes_lost())
    for shape in store.shapes():
        if store.redis.xlen(keys.queue(shape)):
            found.append(_describe_queue(store, keys.queue(shape)))
    return sorted(found)


def _describe_queue(store: Store, queue: str) -> str:
    """A queue with entries left over: the first few entries (task, attempt, rebuild) and
    whose pending list holds them (or none: delivered to nobody, or forgotten)."""
    r = store.redis
    # The Store's clients never decode replies: bytes throughout.
    pending = {p["message_id"]: (p["consumer"].decode(), p["times_delivered"])
               for p in cast("list[dict[str, Any]]", r.xpending_range(queue, "agents", "-", "+", 10))}
    groups = [(g["name"], g["last-delivered-id"], g["pending"])
              for g in cast("list[dict[str, Any]]", r.xinfo_groups(queue))]
    shown = []
    for entry_id, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", r.xrange(queue, count=5)):
        try:
            e = QueueEntry.from_fields(fields)
            what = f"task {e.task} attempt {e.attempt} kind {e.kind} rebuild {e.rebuild}"
        except WireError as error:
            what = f"malformed: {error}"
        shown.append(f"{entry_id.decode()} {what} pending {pending.get(entry_id)}")
    return f"{queue} (groups {groups}; entries: {'; '.join(shown)})"


def _describe_object_key(store: Store, key: str) -> str:
    """An object key left behind, with what keeps it: its kind, the owner's hold, the
    other holders (so a report tells which release went missing)."""
    if store.redis.type(key) != b"hash" or key.endswith(":refs"):
        return key
    # The Store's clients never decode replies: bytes (or None for a missing field).
    kind, held, data = cast("list[bytes | None]", store.redis.hmget(key, "kind", "held", "data"))
    holders = cast("dict[bytes, bytes]", store.redis.hgetall(store.keys.obj_refs(key.rpartition(":obj:")[2])))
    where = data.decode(errors="replace") if kind == b"shm" and data else ""
    return (f"{key} (kind {kind and kind.decode()} {where}, held {held and held.decode()}, "
            f"holders {sorted(h.decode() for h in holders)})")


def _wait_for_no_leaks(store: Store, cluster: ChaosCluster, actor_ids: list[str]) -> list[str]:
    """The monitor settles dead nodes and frees objects asynchronously: give it time."""
    live, every = set(cluster.agents), set(cluster.started)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (leaked := leaked_keys(store, live, every, actor_ids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return leaked


def count_executions(log: Path, report: Report) -> None:
    """Tasks note their key when they start: a key noted twice was run again (a retry)."""
    counts = Counter(log.read_text().split()) if log.exists() else Counter()
    report.executions = sum(counts.values())
    report.retries_observed = sum(n - 1 for n in counts.values())


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Agents inherit this process's environment: set a variable for them, then restore it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run(seconds: float = 60.0, seed: int = 0, nodes: int = 3, *, kill_redis: bool = True,
        work_dir: Path | None = None) -> Report:
    """Run the workload for `seconds` under the seeded killer and return what it found."""
    report = Report(seed)
    kinds = {k: w for k, w in KILL_WEIGHTS.items() if kill_redis or k != "redis"}
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taskmesh-chaos-")))
        stack.enter_context(_env(monitor.ENV_NODE_TIMEOUT_MS, str(NODE_TIMEOUT_MS)))
        cluster = ChaosCluster(work_dir)
        stack.callback(cluster.stop)
        for _ in range(max(nodes, MIN_LIVE_AGENTS)):
            cluster.add_agent()
        _drive(cluster, seed, seconds, work_dir / "executions.log", kinds, report)
        report.nodes_started = list(cluster.started)
    return report


def _drive(cluster: ChaosCluster, seed: int, seconds: float, log: Path, kinds: dict[str, int],
           report: Report) -> None:
    """Connect a driver, run rounds until the time is up while the killer runs, then stop
    the killer and check that the cluster is left clean."""
    started = time.monotonic()
    taskmesh.init(address=cluster.redis.url)
    try:
        runtime = taskmesh.api.get_runtime()
        killer = Killer(cluster, random.Random(seed), runtime.node_id, kinds)
        workload_rng = random.Random(seed + 1)
        scaler = Scaler.remote(7)  # type: ignore[attr-defined]  # mypy ignores what class decorators return
        actor_ids = [scaler._actor_id]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-killer") as pool:
            killing = pool.submit(killer.loop)
            try:
                while time.monotonic() - started < seconds and not killing.done():
                    r = submit_round(report.rounds, str(log), workload_rng, scaler, killer.agents_lost())
                    check_round(r, report, killer.agents_lost)
                    report.rounds += 1
            finally:
                killer.stopped.set()
            killing.result()  # the killer's error, if any, ends the run here
        report.kills = killer.kills
        report.agents_exited = killer.agents_exited
        info = retry_transient(lambda: runtime.store.actor_info(actor_ids[0]))
        report.actor_restarts = int(info.get("restarts", 0))
        del scaler
    finally:
        taskmesh.shutdown()
    store = Store(cluster.redis.url)
    try:
        report.leaked_keys = _wait_for_no_leaks(store, cluster, actor_ids)
    finally:
        store.close()
    count_executions(log, report)
    report.duration_s = time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskmesh.tools.chaos",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the workload runs")
    parser.add_argument("--seed", type=int, default=0, help="seeds every decision of the killer")
    parser.add_argument("--nodes", type=int, default=3, help="node agents (at least 2)")
    parser.add_argument("--no-redis-kills", action="store_true", help="never restart Redis")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the agents' logs and Redis's files here (default: a temporary dir)")
    args = parser.parse_args(argv)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    report = run(args.minutes * 60, args.seed, args.nodes, kill_redis=not args.no_redis_kills,
                 work_dir=args.work_dir)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
