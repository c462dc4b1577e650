"""Other users of the machine are not trusted: they can write /dev/shm and the system's
temp directory, read anything left readable, and reuse pids. These tests play such a
user (uid 12345, where the tests run as root) or fake what one could leave behind: a
planted store under the shm root, a temp root made in advance, files caught at their
creation, a recorded pid that is now another process."""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
from click.testing import CliRunner

from taskmesh._base import config
from taskmesh.cli.commands import main as cli
from taskmesh.objects import shm as _shm
from taskmesh.workers import launch

OTHER_UID = 12345
DEAD_AGENT = "999999999 1"  # a pid no process has, with any start time

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid "
                                                          "(setuid, chown)")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def as_other_user(action: Callable[[], None]) -> None:
    """Run `action` in a child process that has become uid/gid 12345 (no groups)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the other user's action failed"


@pytest.fixture
def shm_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A shm root like /dev/shm (mode 1777: everyone may create in it) of this test's own,
    so that no agent of another test run reaps what is planted here."""
    root = Path(tempfile.mkdtemp(prefix="taskmesh-test-shm-"))
    os.chmod(root, 0o1777)
    monkeypatch.setenv(config.SHM_ROOT.name, str(root))
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def plant_store(root: Path, spill_dir: Path) -> None:
    root.mkdir()
    (root / _shm.AGENT_FILE).write_text(DEAD_AGENT)
    (root / _shm.CONFIG_FILE).write_text(json.dumps({"capacity_bytes": 1, "spill_dir": str(spill_dir)}))


# ---- F1: the reaper of dead agents' stores ---------------------------------------------------


@needs_root
def test_reaper_leaves_a_store_planted_by_another_user_alone(shm_root: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "data").mkdir(parents=True)
    planted = shm_root / f"{_shm.DIR_PREFIX}planted"
    as_other_user(lambda: plant_store(planted, victim))
    assert planted.stat().st_uid == OTHER_UID

    # Even when the victim is inside this agent's own spill root.
    assert _shm.reap_dead_stores(tmp_path) == []
    assert (victim / "data").is_dir()
    assert (planted / _shm.CONFIG_FILE).exists()  # not ours: not touched either


@needs_root
def test_reaper_ignores_an_open_directory_and_files_another_user_wrote(
        shm_root: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    # Ours, but open to everyone: another user wrote its .config.
    open_dir = shm_root / f"{_shm.DIR_PREFIX}open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    (open_dir / _shm.AGENT_FILE).write_text(DEAD_AGENT)
    as_other_user(lambda: (open_dir / _shm.CONFIG_FILE).write_text(
        json.dumps({"spill_dir": str(victim)})))
    # Ours and closed, but holding a .config of another user's (left by an older version,
    # say): the store goes, the directory that file names stays.
    closed = shm_root / f"{_shm.DIR_PREFIX}closed"
    closed.mkdir(mode=0o700)
    (closed / _shm.AGENT_FILE).write_text(DEAD_AGENT)
    (closed / _shm.CONFIG_FILE).write_text(json.dumps({"spill_dir": str(victim)}))
    os.chown(closed / _shm.CONFIG_FILE, OTHER_UID, OTHER_UID)
    # A symbolic link to a store of ours is not a store.
    target = tmp_path / "linked-store"
    plant_store(target, victim)
    (shm_root / f"{_shm.DIR_PREFIX}link").symlink_to(target)

    assert _shm.reap_dead_stores(tmp_path) == [closed]
    assert victim.is_dir() and open_dir.is_dir() and target.is_dir()


def test_reaper_removes_no_spill_directory_outside_its_spill_root(shm_root: Path, tmp_path: Path) -> None:
    spill_root = tmp_path / "spill"
    inside = spill_root / "node-a"
    inside.mkdir(parents=True, mode=0o700)
    outside = tmp_path / "elsewhere"
    outside.mkdir(mode=0o700)
    dead_inside = shm_root / f"{_shm.DIR_PREFIX}a"
    dead_outside = shm_root / f"{_shm.DIR_PREFIX}b"
    dead_root = shm_root / f"{_shm.DIR_PREFIX}c"
    plant_store(dead_inside, inside)
    plant_store(dead_outside, outside)
    plant_store(dead_root, spill_root)  # the spill root itself is no node's to remove

    assert sorted(_shm.reap_dead_stores(spill_root)) == [dead_inside, dead_outside, dead_root]
    assert not inside.exists()
    assert outside.is_dir() and spill_root.is_dir()


# ---- F3: the temp root, secret files, and what `taskmesh stop` signals ---------------------------


@needs_root
def test_a_temp_root_made_by_another_user_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    planted = tmp_path / "taskmesh-temp"
    planted.mkdir()
    os.chmod(planted, 0o777)
    os.chown(planted, OTHER_UID, OTHER_UID)
    monkeypatch.setenv(config.TEMP_DIR.name, str(planted))
    with pytest.raises(config.UnsafeDirectoryError,
                       match=re.escape(f"{planted}: it is owned by uid {OTHER_UID}")):
        config.temp_root()
    with pytest.raises(config.UnsafeDirectoryError):
        launch.record_started([], "redis://:secret@127.0.0.1:1")
    assert list(planted.iterdir()) == []

    result = CliRunner().invoke(cli, ["stop"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: refusing to use {planted}: it is owned by uid")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_a_temp_root_open_to_others_is_refused_and_a_new_one_is_0700(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o755)
    monkeypatch.setenv(config.TEMP_DIR.name, str(loose))
    with pytest.raises(config.UnsafeDirectoryError, match="has mode 0755, open to other users"):
        config.temp_root()

    (tmp_path / "a").mkdir()
    fresh = tmp_path / "a" / "fresh"
    monkeypatch.setenv(config.TEMP_DIR.name, str(fresh))
    old_umask = os.umask(0)
    try:
        assert config.temp_root() == fresh
    finally:
        os.umask(old_umask)
    assert mode(fresh) == 0o700 and fresh.stat().st_uid == os.getuid()


@pytest.fixture
def creations(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Every file created through os.open, io.open or open() while the test runs: its
    name -> its mode the moment it was created (before anything was written to it or
    chmod could narrow it). The umask is 0, so only the mode asked for counts."""
    created: dict[str, int] = {}
    real_os_open, real_io_open = os.open, io.open

    def os_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        new = not os.path.lexists(path)
        fd = real_os_open(path, flags, *args, **kwargs)
        if new:
            created[os.path.basename(path)] = stat.S_IMODE(os.fstat(fd).st_mode)
        return fd

    def io_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        new = isinstance(file, (str, os.PathLike)) and not os.path.lexists(file)
        f = real_io_open(file, *args, **kwargs)
        if new:
            created[os.path.basename(file)] = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        return f

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    old_umask = os.umask(0)
    try:
        yield created
    finally:
        os.umask(old_umask)


def test_record_started_creates_its_files_0600(creations: dict[str, int], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv(config.TEMP_DIR.name, str(tmp_path / "temp"))
    launch.record_started([os.getpid()], "redis://:secret@127.0.0.1:6379")
    launch.record_started([], "redis://:other@127.0.0.1:6380")  # replaced, not rewritten in place
    made = {name: m for name, m in creations.items() if "current_cluster" in name or "started_pids" in name}
    assert any("current_cluster" in name for name in made), creations
    assert all(m == 0o600 for m in made.values()), made
    root = tmp_path / "temp"
    assert sorted(p.name for p in root.iterdir()) == ["current_cluster", "started_pids.json"]
    assert mode(root / "current_cluster") == 0o600 and mode(root / "started_pids.json") == 0o600
    assert (root / "current_cluster").read_text() == "redis://:other@127.0.0.1:6380"


def sleeper(*args: str) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "600", *args])


def test_stop_signals_only_processes_it_can_prove_it_started(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setenv(config.TEMP_DIR.name, str(tmp_path / "temp"))
    mine = sleeper()
    reused = sleeper()  # stands for a process that got a recorded pid after a reboot
    renamed = sleeper()
    # A process whose pid is recorded but not proven, with a child: neither is signalled.
    parent = subprocess.Popen(["sh", "-c", "sleep 600 & wait"])
    try:
        child = None
        deadline = time.monotonic() + 10
        while child is None and time.monotonic() < deadline:
            children = psutil.Process(parent.pid).children()
            child = children[0] if children else None
        assert child is not None
        launch.record_started([mine.pid, reused.pid, renamed.pid, parent.pid])
        path = tmp_path / "temp" / "started_pids.json"
        records = json.loads(path.read_text())
        for record in records:
            if record["pid"] in (reused.pid, parent.pid):
                record["create_time"] -= 3600
            if record["pid"] == renamed.pid:
                record["cmdline"] = ["sleep", "601"]
        config.write_private(path, json.dumps(records + [os.getpid()]))  # an old-style entry too

        result = CliRunner().invoke(cli, ["stop", "--grace-period-s", "0"])
        assert result.exit_code == 0, result.output
        assert "Stopped 1 process(es)." in result.output
        assert "Left alone 4 recorded pid(s)" in result.output
        assert mine.wait(timeout=10) is not None
        for proc in (reused, renamed, parent):
            assert proc.poll() is None
        assert child.is_running()
        assert not path.exists()
    finally:
        for proc in (mine, reused, renamed, parent):
            proc.kill()
            proc.wait()
        if child is not None and child.is_running():
            child.kill()


# ---- F4: Redis's files, spilled objects and logs ---------------------------------------------


def test_a_persistent_redis_keeps_its_files_0600_in_0700_directories(
        creations: dict[str, int], tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir(mode=0o755)  # an existing directory is narrowed too
    server = launch.start_redis(data_dir=data, password="p" * 40, persistent=True)
    try:
        client = redis.Redis.from_url(server.url)
        client.set("tm:_secret:transfer", "s" * 32)
        client.save()  # an RDB file as well
        client.close()
        made = {n: m for n, m in creations.items() if "taskmesh-redis.conf" in n}
        assert made and all(m == 0o600 for m in made.values()), creations
        assert mode(data) == 0o700
        files = [p for p in data.rglob("*")]
        names = {p.name for p in files}
        assert {"taskmesh-redis.conf", "redis.log", "appendonlydir", "dump.rdb"} <= names, names
        assert any(n.endswith(".incr.aof") for n in names), names
        for path in files:
            expected = 0o700 if path.is_dir() else 0o600
            assert mode(path) == expected, (path, oct(mode(path)))
    finally:
        server.stop()


@pytest.mark.sentinel
def test_a_sentinel_config_is_0600_from_its_creation(creations: dict[str, int], tmp_path: Path) -> None:
    primary = launch.start_redis(data_dir=tmp_path / "primary", password="p" * 40)
    try:
        sentinels = launch.start_sentinels(primary, "main", count=1, quorum=1,
                                           data_dir=tmp_path / "sentinels", password="p" * 40)
        try:
            directory = tmp_path / "sentinels" / "sentinel-0"
            assert mode(directory) == 0o700
            for path in directory.iterdir():
                assert mode(path) == 0o600, path
            made = {n: m for n, m in creations.items() if "sentinel.conf" in n}
            assert made and all(m == 0o600 for m in made.values()), creations
        finally:
            for sentinel in sentinels:
                sentinel.stop()
    finally:
        primary.stop()


def test_spilled_objects_are_0600_in_a_0700_directory(shm_root: Path, tmp_path: Path) -> None:
    spill = tmp_path / "spill" / "node-x"
    store = _shm.ShmStore.create_for_node(
        "node-x", _shm.StoreConfig(capacity_bytes=1024 * 1024, spill_dir=spill, full_wait_s=1))
    try:
        for i in range(3):  # the third does not fit: the first is spilled
            with store.create(f"{i:040x}", 400 * 1024) as segment:
                segment.buf[:] = bytes([i]) * segment.size
        assert os.listdir(spill) == [f"{0:040x}"]
        assert mode(spill) == 0o700 and mode(spill / f"{0:040x}") == 0o600
        assert mode(store.root) == 0o700
        view = store.open(f"{0:040x}")  # restored from disk
        assert view is not None and view[0] == 0
        view.release()
    finally:
        store.destroy()


@pytest.mark.cluster
def test_agent_logs_are_0600_in_a_0700_directory(cluster_factory, tmp_path: Path) -> None:
    with cluster_factory(nodes=0) as cluster:
        cluster.log_dir = tmp_path / "logs"
        cluster.add_node(num_cpus=1)
        assert mode(tmp_path / "logs") == 0o700
        assert mode(tmp_path / "logs" / "agent-0.log") == 0o600


# ---- F2: the default cluster cannot be driven by another user ---------------------------

def _refused_without_password(host: str, port: int) -> Callable[[], None]:
    """As the other user: queue an entry on the cluster's Redis (what running code as the
    cluster's user takes) and expect to be asked for a password."""
    def attempt() -> None:
        try:
            redis.Redis(host=host, port=port, socket_timeout=5).xadd("tm:q:CPU=1", {"task": "evil"})
        except redis.AuthenticationError:
            return
        raise SystemExit("the cluster's Redis ran a command without a password")
    return attempt


def _on_no_command_line(password: str) -> None:
    for proc in psutil.process_iter(["cmdline"]):  # ps shows command lines to every user
        assert password not in " ".join(proc.info["cmdline"] or [])


@needs_root
@pytest.mark.cluster
def test_another_user_cannot_drive_the_local_cluster_of_init(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import taskmesh

    monkeypatch.setenv("TASKMESH_TEMP_DIR", str(tmp_path / "root"))
    monkeypatch.delenv("TASKMESH_ADDRESS", raising=False)
    taskmesh.init(num_cpus=1)
    try:
        url = redis.connection.parse_url(taskmesh.api.get_runtime().store.url)
        assert len(url["password"]) >= 16
        as_other_user(_refused_without_password(url["host"], url["port"]))
        _on_no_command_line(url["password"])

        @taskmesh.remote
        def ok() -> int:
            return 1

        assert taskmesh.get(ok.remote(), timeout=30) == 1  # the owner still drives it
    finally:
        taskmesh.shutdown()


@needs_root
@pytest.mark.cluster
@pytest.mark.slow
def test_another_user_cannot_drive_a_default_head(tmp_path: Path) -> None:
    """`taskmesh start --head` on loopback (the default) gets a generated password too,
    in a 0600 file; another user's client is refused, and the password is on no command
    line."""
    root = tmp_path / "root"
    env = dict(os.environ, TASKMESH_TEMP_DIR=str(root))
    env.pop("TASKMESH_ADDRESS", None)
    port = launch.free_port()
    started = subprocess.run([sys.executable, "-m", "taskmesh.cli", "start", "--head", "--port", str(port),
                              "--num-cpus", "1"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        password_file = root / "redis-password"
        assert mode(password_file) == 0o600
        password = password_file.read_text().strip()
        assert len(password) >= 16 and password not in started.stdout + started.stderr
        as_other_user(_refused_without_password("127.0.0.1", port))
        _on_no_command_line(password)
        assert redis.Redis(host="127.0.0.1", port=port, password=password).ping()
    finally:
        stopped = subprocess.run([sys.executable, "-m", "taskmesh.cli", "stop"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
