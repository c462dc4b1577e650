"""`taskmesh list tasks`, `summary tasks`, `logs`, `timeline` and `metrics`, run with
click's CliRunner against a real cluster (as `ray list tasks`, `ray summary tasks`,
`ray logs`, `ray timeline` are used)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from conftest import wait_until
from taskmesh.cli import main as cli
from taskmesh.util.metrics import Counter


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output  # stdout and stderr, as a terminal shows them


def test_list_tasks_filters_by_state_and_name(ray, shared_cluster) -> None:
    @ray.remote
    def fast() -> int:
        return 1

    @ray.remote
    def sleepy() -> None:
        time.sleep(1.5)

    ray.get([fast.remote() for _ in range(3)])
    ref = sleepy.remote()
    url = shared_cluster.url
    out = wait_until(lambda: o if "sleepy" in (o := _run("list", "tasks", "--address", url,
                                                          "--filter", "state=RUNNING")) else None,
                     what="sleepy listed as RUNNING")
    assert "fast" not in out and out.rstrip().endswith("1 tasks")
    assert "STATE" in out and "WORKER_PID" in out
    wait_until(lambda: "3 tasks" in _run("list", "tasks", "--address", url, "--filter", "name=fast",
                                         "--filter", "state=FINISHED"), what="3 finished fast tasks")
    assert "0 tasks" in _run("list", "tasks", "--address", url, "--filter", "name=fast",
                             "--filter", "state!=FINISHED")
    ray.get(ref)
    bad = CliRunner().invoke(cli, ["list", "tasks", "--address", url, "--filter", "state"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_list_as_json_and_what_is_refused(ray, shared_cluster) -> None:
    """`list --format json` gives every field of each row; an unknown filter key, job or
    pid is an error naming it, not an empty answer; status shows memory in GiB; every
    command with --address takes the TLS options too."""
    @ray.remote
    def named_for_json() -> int:
        return 1

    ray.get(named_for_json.remote())
    url = shared_cluster.url
    # Its worker sends its events every ~0.2 s: a RUNNING row may be listed before its end.
    rows = wait_until(lambda: json.loads(_run("list", "tasks", "--address", url, "--format", "json",
                                              "--filter", "name=named_for_json",
                                              "--filter", "state=FINISHED")) or None,
                      what="the task as a FINISHED JSON row")
    assert rows[0]["state"] == "FINISHED" and rows[0]["task_id"]
    nodes = json.loads(_run("list", "nodes", "--address", url, "--format", "json"))
    assert nodes and all(n["node_id"] and n["state"] in ("ALIVE", "DEAD") for n in nodes)

    def refused(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 2, result.output
        return result.output

    assert "'colour' is not supported" in refused("list", "tasks", "--address", url, "--filter", "colour=red")
    assert "no job '99'" in refused("logs", "--address", url, "--job", "99")
    assert "1 is not a taskmesh node agent or worker" in refused("stack", "--pid", "1")
    status = _run("status", "--address", url)
    assert re.search(r"^  memory: \d+\.\dGiB/\d+\.\dGiB$", status, re.M), status
    for command in ("list", "logs", "summary", "timeline", "metrics", "memory", "status"):
        help_text = _run(command, "--help")
        assert "--tls-ca-file" in help_text and "--tls-cert" in help_text, command


def test_summary_tasks_counts_by_function_and_state(ray, shared_cluster) -> None:
    @ray.remote
    def ok() -> int:
        return 1

    @ray.remote(max_retries=0)
    def broken() -> None:
        raise KeyError("x")

    ray.get([ok.remote() for _ in range(2)])
    ray.wait([broken.remote()])

    def counts() -> dict[str, dict[str, str]]:
        """NAME -> {state: count} from the printed table."""
        out = _run("summary", "tasks", "--address", shared_cluster.url).splitlines()
        header, *rows = [line.split() for line in out[1:-1]]
        return {r[0]: dict(zip(header[2:], r[2:], strict=True)) for r in rows}

    wait_until(lambda: c if (c := counts()).get("ok", {}).get("FINISHED") == "2"
                       and c.get("broken", {}).get("FAILED") == "1" else None,
                       what="2 ok FINISHED and 1 broken FAILED in the summary")
    assert _run("summary", "tasks", "--address", shared_cluster.url).startswith("Total tasks: ")


def test_logs_prints_worker_output_of_the_job(ray, shared_cluster) -> None:
    @ray.remote
    def chatty(i: int) -> None:
        print(f"hello from task {i}")

    @ray.remote
    class Speaker:
        def say(self) -> None:
            import sys

            print("actor speaking", file=sys.stderr)

    ray.get([chatty.remote(i) for i in range(3)])
    speaker = Speaker.remote()
    ray.get(speaker.say.remote())
    job = ray.get_runtime_context().get_job_id()
    url = shared_cluster.url
    out = wait_until(
        lambda: o if "actor speaking" in (o := _run("logs", "--address", url, "--job", job)) else None,
        what="the actor's line in the job's logs")
    for i in range(3):
        assert f"hello from task {i}" in out
    assert "(chatty pid=" in out
    only_actor = _run("logs", "--address", url, "--job", job, "--actor", speaker._actor_id)
    assert "actor speaking" in only_actor and "hello from task" not in only_actor
    assert len(_run("logs", "--address", url, "--job", job, "--tail", "1").splitlines()) == 1


def test_timeline_command_writes_a_chrome_trace(ray, shared_cluster, tmp_path: Path) -> None:
    @ray.remote
    def traced() -> None:
        time.sleep(0.02)

    ray.get([traced.remote() for _ in range(2)])
    path = tmp_path / "trace.json"

    def written() -> list:
        _run("timeline", "--address", shared_cluster.url, "--output", str(path))
        return [e for e in json.loads(path.read_text()) if e["name"] == "traced"]

    events = wait_until(lambda: e if len(e := written()) == 2 else None, what="two traced events")
    assert all(e["ph"] == "X" and e["dur"] >= 20_000 for e in events)


def test_metrics_command_prints_and_serves_prometheus_text(ray, shared_cluster) -> None:
    @ray.remote
    def count() -> None:
        Counter("cli_jobs", description="Jobs.").inc()

    ray.get([count.remote() for _ in range(3)])
    url = shared_cluster.url
    wait_until(lambda: "cli_jobs_total 3.0" in _run("metrics", "--address", url).splitlines(),
               what="the counter in `taskmesh metrics`")
    # --serve: GET /metrics answers the same text.
    proc = subprocess.Popen([sys.executable, "-m", "taskmesh.cli", "metrics", "--address", url,
                             "--serve", "0"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # "Serving metrics on http://HOST:PORT/metrics"
        endpoint = line.split()[-1]
        assert endpoint.startswith("http://127.0.0.1:") and endpoint.endswith("/metrics"), line
        body = urllib.request.urlopen(endpoint, timeout=5).read().decode()
        assert "cli_jobs_total 3.0" in body.splitlines()
        assert "# TYPE cli_jobs_total counter" in body.splitlines()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_logs_and_tasks_of_every_node_are_readable_from_one_place(cluster_factory) -> None:
    import taskmesh

    with cluster_factory(nodes=0) as cluster:
        node_a = cluster.add_node(num_cpus=1, resources={"a": 1})
        node_b = cluster.add_node(num_cpus=1, resources={"b": 1})
        taskmesh.init(address=cluster.url)
        try:
            @taskmesh.remote
            def where(tag: str) -> str:
                print(f"running on {tag}")
                return taskmesh.get_runtime_context().get_node_id()

            nodes = taskmesh.get([where.options(resources={"a": 1}).remote("a"),
                                  where.options(resources={"b": 1}).remote("b")])
            assert nodes == [node_a, node_b]
            job = taskmesh.get_runtime_context().get_job_id()
        finally:
            taskmesh.shutdown()
        for node, tag, other in ((node_a, "a", "b"), (node_b, "b", "a")):
            out = wait_until(lambda node=node, tag=tag: o if f"running on {tag}" in (
                o := _run("logs", "--address", cluster.url, "--job", job, "--node", node)) else None,
                what=f"the line printed on node {tag}")
            assert f"running on {other}" not in out
            listed = wait_until(lambda node=node: o if "1 tasks" in (o := _run(
                "list", "tasks", "--address", cluster.url, "--filter", f"node_id={node}",
                "--filter", "state=FINISHED")) else None, what=f"the task of node {tag}")
            assert "where" in listed


def test_get_log_reads_the_same_output(ray) -> None:
    from taskmesh.util.state import get_log

    @ray.remote
    def say(word: str) -> None:
        print(word)

    ray.get([say.remote("alpha"), say.remote("beta")])
    job = ray.get_runtime_context().get_job_id()
    lines = wait_until(lambda: g if {"alpha", "beta"} <= set(g := list(get_log(job_id=job))) else None,
                       what="both lines")
    assert len(lines) == 2
    assert list(get_log(job_id=job, tail=1)) == lines[-1:]

