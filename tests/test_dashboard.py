"""The web dashboard: who may read it (no browser), how it is started (the CLI, `start
--head`, `init(include_dashboard=True)`), and its pages as a person sees them in a real
browser (headless Chromium) over a real cluster: the node, a failed task with its
traceback, an actor turning DEAD, a log line arriving and the timeline, all without a
reload. One cluster, one dashboard and one browser serve the whole module.

Screenshots go to the test's temp dir, or to $SCREENSHOTS_DIR when set (that is how
docs/screenshots/ was made: SCREENSHOTS_DIR=docs/screenshots pytest tests/test_dashboard.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import taskmesh
from conftest import need_program, wait_until
from taskmesh import security
from taskmesh.cli import main as cli
from taskmesh.dashboard.auth import COOKIE, resolve_token
from taskmesh.dashboard.server import DashboardServer
from taskmesh.store import Store
from taskmesh.workers import launch

TOKEN = "t0ken-for-the-dashboard-tests-0123456789"
SCRIPT_NAME = "<script>window.pwned=1</script>"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, redirects not followed."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def served(redis_server: launch.RedisServer) -> Iterator[Any]:
    """Start DashboardServers of the session's Redis (in threads; its data is left as it
    is: the module's cluster may be using it); all stopped after."""
    store = Store(redis_server.url)
    servers = []

    def serve(host: str = "127.0.0.1", token: str | None = None) -> DashboardServer:
        server = DashboardServer(store, host=host, port=0, token=token)
        servers.append((server, server.start_thread()))
        wait_until(lambda: _answers(server.url), what="the dashboard to answer")
        return server

    yield serve
    for server, thread in servers:
        server.stop()
        thread.join(timeout=10)
    store.close()


def _answers(url: str) -> bool:
    try:
        _get(url + "/static/dashboard.css")
        return True
    except OSError:
        return False


# ---- who may read it ---------------------------------------------------------------------

def test_a_token_is_asked_for_and_checked(served: Any) -> None:
    url = served(token=TOKEN).url
    assert _get(url + "/api/cluster")[0] == 401
    assert _get(url + "/api/cluster", {"Authorization": "Bearer wrong"})[0] == 401
    assert _get(url + "/?token=wrong")[0] == 401
    status, _, body = _get(url + "/api/cluster", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "nodes" in json.loads(body)
    # A first visit with the token: a cookie only scripts of no page can read, and an
    # address without the token.
    status, headers, _ = _get(url + f"/jobs?token={TOKEN}")
    assert status == 303 and headers["location"] == "/jobs"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, headers, body = _get(url + "/jobs", {"Cookie": f"other=1; {COOKIE}={TOKEN}"})
    assert status == 200 and b"<h1>Jobs</h1>" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert _get(url + "/jobs", {"Cookie": f"{COOKIE}=wrong"})[0] == 401


def test_without_a_token_only_loopback_names_are_answered(served: Any) -> None:
    """A page of another site that rebinds its DNS name to 127.0.0.1 gets nothing."""
    url = served().url
    assert _get(url + "/api/cluster")[0] == 200
    assert _get(url + "/api/cluster", {"Host": "localhost:8265"})[0] == 200
    assert _get(url + "/api/cluster", {"Host": "evil.example:8265"})[0] == 403


def test_a_bind_beyond_loopback_gets_a_token(served: Any, tmp_path: Path) -> None:
    assert resolve_token("127.0.0.1", None) == (None, None)
    token, path = resolve_token("0.0.0.0", tmp_path / "token")
    assert token and path == tmp_path / "token" and (path.stat().st_mode & 0o777) == 0o600
    assert resolve_token("0.0.0.0", path) == (token, path)  # an existing file is kept
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        resolve_token("0.0.0.0", path)
    ip = security.this_machine_ip()
    if security.is_loopback(ip):
        pytest.skip("this machine has no address but loopback")
    token, _ = resolve_token(ip, tmp_path / "ip-token")
    url = served(host=ip, token=token).url
    assert _get(url + "/api/cluster")[0] == 401
    assert _get(url + "/api/cluster", {"Authorization": f"Bearer {token}"})[0] == 200


def test_what_a_page_echoes_is_escaped(served: Any) -> None:
    url = served().url
    status, _, body = _get(url + "/logs?job=%3Cscript%3Ealert(1)%3C/script%3E")
    assert status == 200
    assert b"<script>alert" not in body and b"&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert _get(url + "/jobs/%3Cscript%3E")[0] == 404


def test_a_port_in_use_is_named(redis_server: launch.RedisServer) -> None:
    holder = DashboardServer(Store(redis_server.url), port=0)
    try:
        result = CliRunner().invoke(cli, ["dashboard", "--address", redis_server.url,
                                          "--port", str(holder.port)])
    finally:
        holder.sock.close()
    assert result.exit_code != 0
    assert f"cannot listen on 127.0.0.1:{holder.port}" in result.output
    assert "in use" in result.output


def test_jobs_are_listed_beside_their_placement_groups(redis_server: launch.RedisServer) -> None:
    """A job's set of placement groups shares the jobs' key pattern: not a job."""
    store = Store(redis_server.url, prefix="dashtest")
    try:
        store.redis.delete(*store.redis.keys("dashtest:*") or ["-"])
        job_id = store.new_job({"driver_pid": "1"})
        store.redis.sadd(store.keys.job_pgs(job_id), "somegroup")
        store.redis.sadd(store.keys.job_actors(job_id), "someactor")
        assert [j["job_id"] for j in store.job_infos()] == [job_id]
    finally:
        store.redis.delete(*store.redis.keys("dashtest:*") or ["-"])
        store.close()


# ---- how it is started -------------------------------------------------------------------

def test_init_starts_and_stops_a_dashboard(shared_cluster: Any) -> None:
    context = taskmesh.init(address=shared_cluster.url, include_dashboard=True, dashboard_port=0)
    try:
        url = context.dashboard_url
        assert url and url.startswith("http://127.0.0.1:")
        status, _, body = _get(url + "/api/jobs")
        assert status == 200 and context["job_id"] in body.decode()
    finally:
        taskmesh.shutdown()
    with pytest.raises(OSError):
        _get(url + "/api/jobs")
    with pytest.raises(ValueError, match="dashboard_port"):
        taskmesh.init(address=shared_cluster.url, dashboard_port=70000)


@pytest.mark.cluster
def test_start_head_starts_it_and_stop_stops_it(tmp_path: Path) -> None:
    env = dict(os.environ, TASKMESH_TEMP_DIR=str(tmp_path / "temp"))
    env.pop("TASKMESH_ADDRESS", None)

    def taskmesh_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "taskmesh.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    started = taskmesh_cli("start", "--head", "--port", "0", "--num-cpus", "1", "--dashboard-port", "0")
    try:
        assert started.returncode == 0, started.stderr
        url = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+)", started.stdout)
        assert url, started.stdout
        assert _get(url[1] + "/api/cluster")[0] == 200
    finally:
        stopped = taskmesh_cli("stop", "--grace-period-s", "0")
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(OSError):
        _get(url[1] + "/api/cluster")


# ---- the pages, in a browser ---------------------------------------------------------------

@pytest.fixture(scope="module")
def workload(shared_cluster: Any) -> Iterator[dict[str, Any]]:
    """A driver on the module's cluster that ran tasks (one failing, one with a name
    that is markup), an actor and a placement group."""
    from taskmesh.util.placement_group import placement_group

    context = taskmesh.init(address=shared_cluster.url)

    @taskmesh.remote
    def greet(i: int) -> int:
        print(f"greeting number {i}")
        return i

    @taskmesh.remote(max_retries=0)
    def explode() -> None:
        raise ValueError("the dashboard must show this")

    @taskmesh.remote(num_cpus=0)
    class Keeper:
        def ping(self) -> str:
            print("keeper says hi")
            return "pong"

    taskmesh.get([greet.remote(i) for i in range(4)])
    failed = explode.remote()
    with pytest.raises(ValueError):
        taskmesh.get(failed)
    taskmesh.get(greet.options(name=SCRIPT_NAME).remote(99))
    keeper = Keeper.remote()
    assert taskmesh.get(keeper.ping.remote()) == "pong"
    group = placement_group([{"CPU": 1}])
    taskmesh.get(group.ready(), timeout=30)
    yield {"job": context["job_id"], "keeper": keeper, "greet": greet, "failed": failed}
    taskmesh.shutdown()


@pytest.fixture(scope="module")
def dashboard(shared_cluster: Any) -> Iterator[str]:
    store = Store(shared_cluster.url)
    server = DashboardServer(store, port=0)
    thread = server.start_thread()
    yield server.url
    server.stop()
    thread.join(timeout=10)
    store.close()


@pytest.fixture(scope="module")
def browser(shared_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(After the cluster, so that it quits before the cluster's check for leftover
    processes.)"""
    need_program("browser", "chromium", "chromedriver", why="the dashboard's pages are checked in a browser")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: Any, dashboard: str, workload: dict[str, Any], tmp_path: Path) -> Any:
    """open(path) loads a page and marks it, so that `same_page()` tells it was not
    reloaded; shot(name) saves a screenshot."""
    shots = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)

    class Page:
        def open(self, path: str) -> None:
            browser.get(dashboard + path)
            browser.execute_script("window.__notReloaded = true")

        def text(self, css: str = "main") -> str:
            from selenium.webdriver.common.by import By

            return "\n".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, css))

        def wait_text(self, wanted: str, css: str = "main", timeout_s: float = 20) -> str:
            return wait_until(lambda: wanted in self.text(css) and self.text(css), timeout_s,
                              what=f"{wanted!r} in {css}")

        def same_page(self) -> bool:
            return browser.execute_script("return window.__notReloaded === true")

        def shot(self, name: str) -> None:
            shots.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(shots / f"{name}.png"))

    return Page()


def test_cluster_page_shows_the_node(page: Any, shared_cluster: Any) -> None:
    node_id = shared_cluster.started[0]
    page.open("/")
    text = page.wait_text(node_id[:12], "#nodes")
    assert "ALIVE" in text and "CPU" in text
    page.wait_text("CPU=1", "#queues")
    assert page.text("#dead-letters") == "0"
    page.shot("cluster")


def test_jobs_page_lists_the_job(page: Any, workload: dict[str, Any], shared_cluster: Any) -> None:
    """The driver's job, and a job submitted with `taskmesh job submit`'s client."""
    from taskmesh.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(shared_cluster.url)
    submitted = client.submit_job(entrypoint="python -c \"print('submitted hello')\"")
    page.open("/jobs")
    text = page.wait_text(workload["job"], "#jobs")
    assert "RUNNING" in text and "FAILED 1" in text
    wait_until(lambda: client.get_job_status(submitted) == JobStatus.SUCCEEDED, timeout_s=60,
               what="the submitted job's success")
    row = wait_until(lambda: next((line for line in page.text("#submitted").splitlines()
                                   if submitted in line and "SUCCEEDED" in line), None),
                     what="the submitted job's row, SUCCEEDED")
    assert "print('submitted hello')" in row  # the entrypoint, as text
    page.shot("jobs")


def test_the_metrics_route_serves_the_builtin_metrics(dashboard: str, workload: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple, float]:
        status, headers, body = _get(dashboard + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body.decode()) for s in family.samples}

    # Workers send their task counts with their events, every ~0.2 s.
    failed = ("taskmesh_tasks_failed_total", (("name", "explode"),))
    samples = wait_until(lambda: (got := scrape()).get(failed) and got, what="the workers' task counts")
    assert samples[("taskmesh_tasks_finished_total", (("name", "greet"),))] >= 4
    assert samples[("taskmesh_tasks_failed_total", (("name", "explode"),))] == 1
    assert samples[("taskmesh_nodes", (("state", "alive"),))] >= 1


def test_job_page_shows_a_failed_task_with_its_traceback(page: Any, browser: Any,
                                                         workload: dict[str, Any]) -> None:
    page.open(f"/jobs/{workload['job']}")
    page.wait_text("FAILED", "#tasks")
    traceback = page.wait_text("ValueError: the dashboard must show this", "#tasks pre.traceback")
    assert "in explode" in traceback
    # A task whose name is markup is shown as that text, and nothing of it runs.
    page.wait_text(SCRIPT_NAME, "#tasks")
    assert browser.execute_script("return window.pwned") is None
    page.wait_text("Keeper", "#actors")
    page.wait_text("#0 CPU=1", "#pgs")
    page.shot("job")
    # Filters: only the failed task.
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "#task-filters select[name=state]")).select_by_value("FAILED")
    wait_until(lambda: "FINISHED" not in page.text("#tasks") and "explode" in page.text("#tasks"),
               what="the task list filtered")


def test_an_actor_turns_dead_without_a_reload(page: Any, workload: dict[str, Any]) -> None:
    page.open(f"/jobs/{workload['job']}")
    page.wait_text("ALIVE", "#actors")
    taskmesh.kill(workload["keeper"])
    page.wait_text("DEAD", "#actors")
    assert page.same_page()


def test_a_printed_line_appears_live(page: Any, workload: dict[str, Any]) -> None:
    page.open(f"/logs?job={workload['job']}")
    page.wait_text("greeting number 3", "#log")
    page.wait_text(f"({SCRIPT_NAME} pid=", "#log")  # a name that is markup, as text
    taskmesh.get(workload["greet"].remote(424242))
    page.wait_text("greeting number 424242", "#log")
    assert page.same_page()
    page.shot("logs")


def test_the_timeline_is_drawn(page: Any, browser: Any, workload: dict[str, Any]) -> None:
    page.open(f"/jobs/{workload['job']}/timeline")
    bars = wait_until(lambda: browser.find_elements("css selector", "#timeline rect.bar"),
                      what="the timeline's bars")
    assert len(bars) >= 5
    assert browser.find_elements("css selector", "#timeline rect.bar.FAILED")
    page.shot("timeline")
