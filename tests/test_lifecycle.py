"""A cluster's life as a user sees it from a shell: `stop` then `start --head` is a new,
empty cluster unless --keep-state; a Redis that goes away is logged a few times, not once
per failed call, and a blocked `get()` gives up after TASKMESH_REDIS_UNREACHABLE_TIMEOUT_S;
Ctrl-C in a local run prints the KeyboardInterrupt alone; the CLI finds the local cluster
of a running `init()` and forgets it when the driver ends."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_until
from taskmesh._base import config
from taskmesh.exceptions import StoreUnavailableError
from taskmesh.store.outage import Outage
from taskmesh.workers import launch


def _env(temp_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, config.ENV_TEMP_DIR: str(temp_dir), **extra}
    env.pop(config.REDIS_PASSWORD.name, None)
    env.pop(launch.ENV_ADDRESS, None)
    return env


def _taskmesh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taskmesh.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


MAKE_ACTOR = """
    import taskmesh as ray
    ray.init(address="auto")

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Counter:
        def ping(self):
            return "pong"

    assert ray.get(square.remote(3), timeout=60) == 9
    counter = Counter.options(name="survivor", lifetime="detached").remote()
    assert ray.get(counter.ping.remote(), timeout=60) == "pong"
    ray.shutdown()
"""


@pytest.mark.cluster
@pytest.mark.slow
def test_stop_then_start_head_is_a_fresh_cluster_unless_keep_state(tmp_path: Path) -> None:
    env = _env(tmp_path / "temp")

    def start(*extra: str) -> None:
        started = _taskmesh("start", "--head", "--port", "0", "--num-cpus", "1", *extra, env=env)
        assert started.returncode == 0, started.stderr

    def stop() -> str:
        began = time.monotonic()
        stopped = _taskmesh("stop", env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert time.monotonic() - began < 15, "stop took longer than an idle drain needs"
        return stopped.stdout

    start()
    try:
        made = _python(MAKE_ACTOR, env)
        assert made.returncode == 0, made.stderr
    finally:
        out = stop()
    # Redis, the agent and at least one worker of it
    assert int(out.split("Stopped ")[1].split()[0]) >= 3, out

    start()
    try:
        status = _taskmesh("status", env=env)
        assert "Nodes: 1 alive, 0 dead" in status.stdout, status.stdout
        for what in ("actors", "jobs"):
            listed = _taskmesh("list", what, env=env)
            assert listed.stdout.strip().endswith(f"0 {what}"), listed.stdout
        made = _python(MAKE_ACTOR, env)
        assert made.returncode == 0, made.stderr
    finally:
        stop()

    start("--keep-state")
    try:
        listed = _taskmesh("list", "actors", "--filter", "name=survivor", env=env)
        assert listed.stdout.strip().endswith("1 actors"), listed.stdout
    finally:
        stop()


def test_an_outage_is_logged_once_then_at_a_capped_rate(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    logger = logging.getLogger("taskmesh.test-outage")
    outage = Outage("redis://:secret-password@127.0.0.1:1", logger, repeat_s=60, clock=lambda: now[0])
    error = StoreUnavailableError("Redis is unavailable")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        while now[0] < 250:  # 150 s of loops failing ten times a second
            outage.failed("leasing", error)
            outage.failed("heartbeat", error)
            now[0] += 0.1
        assert outage.down_for() == pytest.approx(150, abs=0.5)
        assert outage.ongoing(lambda: (_ for _ in ()).throw(ConnectionError()))
        assert "unreachable for 150 s" in outage.message()
        assert not outage.ongoing(lambda: True)  # answered: the outage is over
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages  # the first failure, two reminders, the recovery
    assert "is unreachable (leasing" in messages[0]
    assert "still unreachable after 60 s" in messages[1] and "after 120 s" in messages[2]
    assert "answers again after 150 s" in messages[3]
    assert not any("secret-password" in m for m in messages + [outage.message()])
    assert outage.down_for() == 0


OUTAGE = """
    import logging, sys, time
    import taskmesh as ray
    from taskmesh import api
    from taskmesh.exceptions import StoreUnavailableError
    from taskmesh.objects import ObjectRef

    ray.init(num_cpus=1)

    @ray.remote
    def slow():
        time.sleep(120)

    ref = slow.remote()
    time.sleep(1)
    api._cluster.redis.proc.kill()
    began = time.monotonic()
    try:
        ray.get(ref)
    except StoreUnavailableError as e:
        print(f"raised after {time.monotonic() - began:.1f} s: {e}", flush=True)
    began = time.monotonic()
    try:  # an object owned elsewhere: looked up in Redis, not waited for here
        ray.get(ObjectRef("deadbeef" + "0" * 20))
    except StoreUnavailableError as e:
        print(f"elsewhere after {time.monotonic() - began:.1f} s: {e}", flush=True)
"""


@pytest.mark.cluster
def test_a_get_gives_up_on_a_redis_gone_for_the_configured_time(tmp_path: Path) -> None:
    env = _env(tmp_path / "temp", TASKMESH_REDIS_UNREACHABLE_TIMEOUT_S="3")
    began = time.monotonic()
    ran = _python(OUTAGE, env)
    assert ran.returncode == 0, ran.stderr
    assert "raised after" in ran.stdout, (ran.stdout, ran.stderr)
    waited = float(ran.stdout.split("raised after ")[1].split()[0])
    assert 3 <= waited < 8, ran.stdout
    assert "has been unreachable for" in ran.stdout and "127.0.0.1:" in ran.stdout
    assert "elsewhere after" in ran.stdout, (ran.stdout, ran.stderr)
    elsewhere = ran.stdout.split("elsewhere after ")[1]
    assert 1 <= float(elsewhere.split()[0]) < 8 and "has been unreachable for" in elsewhere
    # The outage once, and the shutdown's one line; no line per failed call.
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert 1 <= len([line for line in lines if "unreachable" in line]) <= 3, ran.stderr
    assert not [line for line in lines if "error while" in line], ran.stderr
    # The driver's shutdown stopped the agent, whose drain gave up on Redis at once.
    assert time.monotonic() - began < 30


@pytest.mark.cluster
def test_a_draining_agent_whose_redis_is_gone_exits_promptly(tmp_path: Path) -> None:
    server = launch.start_redis(data_dir=tmp_path / "redis")
    log_path = tmp_path / "agent.log"
    try:
        agent, _ = launch.start_agent(server.url, num_cpus=1, log_path=log_path, fate_share=True)
    finally:
        server.stop()
    try:
        time.sleep(3)  # the loops fail for a while: one line, not one per call
        began = time.monotonic()
        agent.terminate()
        agent.wait(timeout=20)
        assert time.monotonic() - began < 8
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    logged = log_path.read_text()
    assert "failed:" not in logged, logged
    assert 1 <= logged.count("unreachable") <= 3, logged


SIGINT_DRIVER = """
    import atexit, time
    import taskmesh as ray
    ray.init(num_cpus=1)
    atexit.register(time.sleep, 1)  # runs before taskmesh's shutdown: a program's own exit work

    @ray.remote
    def slow():
        time.sleep(120)

    ref = slow.remote()
    print("ready", flush=True)
    ray.get(ref)
"""


@pytest.mark.cluster
def test_ctrl_c_in_a_local_run_prints_the_keyboard_interrupt_alone(tmp_path: Path) -> None:
    # As a terminal does: SIGINT to the driver's whole process group.
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SIGINT_DRIVER)],
                              env=_env(tmp_path / "temp"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline() == "ready\n"
        spawned = psutil.Process(driver.pid).children(recursive=True)
        assert spawned
        time.sleep(1)  # blocked in get
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1] == "KeyboardInterrupt", err
    assert lines[0].startswith("Traceback"), err
    assert not [line for line in lines if "taskmesh" in line and "error" in line], err
    gone, alive = psutil.wait_procs(spawned, timeout=15)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]


LOCAL_DRIVER = """
    import sys
    import taskmesh as ray
    info = ray.init(num_cpus=1)
    print(info["node_id"], flush=True)
    sys.stdin.readline()
"""


@pytest.mark.cluster
def test_the_cli_finds_a_running_init_and_forgets_it_after(tmp_path: Path) -> None:
    env = _env(tmp_path / "temp")
    for ending in ("exit", "kill"):
        driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOCAL_DRIVER)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert driver.stdout is not None
            node_id = driver.stdout.readline().strip()
            assert node_id
            status = _taskmesh("status", env=env)
            assert status.returncode == 0, status.stderr
            assert "Nodes: 1 alive" in status.stdout and node_id in status.stdout
            records = list((tmp_path / "temp" / "local_clusters").iterdir())
            assert [oct(r.stat().st_mode & 0o777) for r in records] == ["0o600"]
            joined = _python("""
                import taskmesh as ray
                ray.init(address="auto")
                print(ray.get_runtime_context().get_node_id() or "", [n["NodeID"] for n in ray.nodes()])
            """, env)
            assert joined.returncode == 0 and node_id in joined.stdout, joined.stderr
            if ending == "exit":
                driver.communicate("\n", timeout=60)
            else:  # no shutdown: the record stays, pointing at a server that died with it
                driver.kill()
                driver.wait()
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        # The fate-shared server may take a moment to go after a kill.
        status = wait_until(lambda: (s := _taskmesh("status", env=env)).returncode == 2 and s,
                            timeout_s=20, what="status to find no cluster")
        assert "no cluster is running" in status.stderr
        assert not list((tmp_path / "temp" / "local_clusters").iterdir())
