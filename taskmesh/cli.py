"""The `taskmesh` command: start/worker/stop/status/list/memory/microbenchmark. Commands parse and
print; the work is done by the modules they call."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from . import _services

ADDRESS_HELP = "Redis address of the cluster (host:port, redis://[:password@]host:port, rediss://...)."


def _address_option(required: bool) -> Callable:
    def decorate(fn: Callable) -> Callable:
        return click.option("--address", envvar=_services.ENV_ADDRESS, required=required,
                            show_envvar=True, help=ADDRESS_HELP)(fn)
    return decorate


def _parse_resources(ctx: Any, param: Any, value: str | None) -> dict[str, float]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e.msg}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"must be a JSON object like '{{\"disk\": 4}}', got {value!r}")
    for key, amount in parsed.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise click.BadParameter(f"resource {key!r} must be a non-negative number, got {amount!r}")
        if key in ("CPU", "GPU"):
            raise click.BadParameter("use --num-cpus / --num-gpus instead of CPU/GPU in --resources")
    return {k: float(v) for k, v in parsed.items()}


def _canonical(address: str | None) -> str | None:
    if address is None:
        return None
    try:
        return _services.canonicalize_address(address)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--address") from None


def _node_options(fn: Callable) -> Callable:
    @click.option("--num-cpus", type=click.FloatRange(min=0), default=None,
                  help="CPUs this node offers (default: all).")
    @click.option("--num-gpus", type=click.FloatRange(min=0), default=None, help="GPUs this node offers.")
    @click.option("--resources", callback=_parse_resources, default=None,
                  help='Custom resources as JSON, e.g. \'{"disk": 4}\'.')
    @click.option("--object-store-memory", type=click.IntRange(min=1024 * 1024), default=None,
                  help="Bytes of shared memory for objects on this node (default: 30% of RAM).")
    @click.option("--spill-dir", type=click.Path(file_okay=False), default=None,
                  help="Directory objects are spilled to when shared memory is full "
                       "(default: under the temp dir).")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return wrapper


def _node_resources(num_cpus: float | None, num_gpus: float | None, resources: dict) -> dict:
    out = {"CPU": float(num_cpus if num_cpus is not None else os.cpu_count() or 1), **resources}
    if num_gpus:
        out["GPU"] = float(num_gpus)
    return out


@click.group()
def main() -> None:
    """taskmesh: distributed Python tasks with Redis as the control plane."""


@main.command()
@_address_option(required=False)
@_node_options
@click.option("--head", is_flag=True, help="Start the cluster's Redis here too.")
@click.option("--port", type=click.IntRange(0, 65535), default=6379, show_default=True,
              help="Port of the Redis server started with --head.")
@click.option("--redis-bind", default="127.0.0.1", show_default=True,
              help="Interface the Redis server started with --head listens on.")
def start(address: str | None, num_cpus: float | None, num_gpus: float | None,
          resources: dict, object_store_memory: int | None, spill_dir: str | None,
          head: bool, port: int, redis_bind: str) -> None:
    """Start this machine's node in the background (with --head: Redis too)."""
    if head == bool(address):
        raise click.UsageError("give either --head (start a new cluster) or --address (join one)")
    root = _services.temp_root()
    pids = []
    if head:
        server = _services.start_redis(data_dir=root / "redis", host=redis_bind, port=port or None,
                                       persistent=True, fate_share=False)
        url = server.url
        pids.append(server.proc.pid)
    else:
        url = _canonical(address)
        assert url is not None
    proc, node_id = _services.start_agent(
        url, num_cpus=_node_resources(num_cpus, num_gpus, resources)["CPU"],
        resources={k: v for k, v in _node_resources(num_cpus, num_gpus, resources).items() if k != "CPU"},
        log_path=root / "logs" / f"agent-{int(time.time())}-{os.getpid()}.log", fate_share=False,
        object_store_memory=object_store_memory, spill_dir=spill_dir)
    pids.append(proc.pid)
    _services.record_started(pids, url if head else None)
    click.echo(f"Started node {node_id}.")
    if head:
        click.echo("To add a node to this cluster, run on it:\n"
                   f"    taskmesh worker --address '{url}'\n"
                   "To connect a program: taskmesh.init(address='auto') on this machine, or\n"
                   f"    taskmesh.init(address='{url}')")


@main.command()
@_address_option(required=True)
@_node_options
@click.option("--node-ip-address", default=None, help="IP to register (default: the one that reaches Redis).")
@click.option("--ready-fd", type=int, default=None, hidden=True)
def worker(address: str, num_cpus: float | None, num_gpus: float | None, resources: dict,
           object_store_memory: int | None, spill_dir: str | None,
           node_ip_address: str | None, ready_fd: int | None) -> None:
    """Run a node agent in the foreground: register this node and run its tasks."""
    from .workers import NodeAgent, object_store_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = _canonical(address)
    assert url is not None
    agent = NodeAgent(url, resources=_node_resources(num_cpus, num_gpus, resources),
                      node_ip=node_ip_address,
                      object_store=object_store_config(object_store_memory, spill_dir))
    try:
        agent.run(ready_fd=ready_fd)
    except ValueError as e:  # a Redis taskmesh must not use (see Store.check_server)
        raise click.ClickException(str(e)) from None


@main.command()
def stop() -> None:
    """Stop the nodes (and Redis) that `taskmesh start` started on this machine."""
    from ._process import stop_processes

    stopped = stop_processes(_services.started_pids(), timeout_s=10)
    _services.forget_started()
    click.echo(f"Stopped {len(stopped)} process(es).")


@main.command()
@_address_option(required=False)
def status(address: str | None) -> None:
    """Nodes, resources and queues, read from Redis."""
    store = _connect(address)
    url = store.url
    try:
        nodes = store.nodes()
        queues = store.queue_stats()
    finally:
        store.close()
    alive = [n for n in nodes if n["alive"]]
    click.echo(f"Cluster at {_services.mask_password(url)}")
    click.echo(f"Nodes: {len(alive)} alive, {len(nodes) - len(alive)} dead")
    for n in nodes:
        state = "ALIVE" if n["alive"] else "DEAD"
        click.echo(f"  {n['node_id']}  {state:5}  {n.get('ip', '?'):15}  {_usage(n)}")
    total: dict[str, float] = {}
    avail: dict[str, float] = {}
    for n in alive:
        for k, v in n["resources_total"].items():
            total[k] = total.get(k, 0.0) + v
        for k, v in n["resources_available"].items():
            avail[k] = avail.get(k, 0.0) + v
    click.echo("Resources (used/total):")
    for k in sorted(total):
        click.echo(f"  {k}: {total[k] - avail.get(k, 0.0):g}/{total[k]:g}")
    click.echo("Tasks:")
    queued = sum(q for q, _ in queues.values())
    running = sum(r for _, r in queues.values())
    click.echo(f"  queued: {queued}  running: {running}")
    for shape, (q, r) in sorted(queues.items()):
        click.echo(f"    {shape}: queued {q}, running {r}")


@main.command()
@_address_option(required=False)
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the largest objects to list.")
def memory(address: str | None, top: int) -> None:
    """Object-store usage per node and the largest objects, read from Redis."""
    store = _connect(address)
    try:
        nodes = [n for n in store.nodes() if n["alive"]]
        objs = store.object_summaries()
    finally:
        store.close()
    click.echo(f"{'node':18} {'used':>10} {'capacity':>10} {'objects':>8} {'spilled':>10} "
               f"{'spilled objs':>12} {'free pool':>10}")
    for n in nodes:
        click.echo(f"{n['node_id']:18} {_mib(n.get('store_used'))} {_mib(n.get('store_capacity'))} "
                   f"{int(n.get('store_objects', 0)):8} {_mib(n.get('store_spilled'))} "
                   f"{int(n.get('store_spilled_objects', 0)):12} {_mib(n.get('store_free_pool'))}")
    inline = [o for o in objs if o["kind"] != "shm"]
    shared = [o for o in objs if o["kind"] == "shm"]
    click.echo(f"Objects: {len(shared)} in shared memory ({_mib(sum(o['size'] for o in shared)).strip()}), "
               f"{len(inline)} inline in Redis ({_mib(sum(o['size'] for o in inline)).strip()})")
    if top and objs:
        click.echo(f"Largest {min(top, len(objs))}:")
        click.echo(f"  {'object id':30} {'size':>10} {'kind':6} {'owner':8}  {'nodes':18} held by")
        for o in sorted(objs, key=lambda o: -o["size"])[:top]:
            click.echo(f"  {o['object_id']:30} {_mib(o['size'])} {o['kind']:6} {o['owner']:8}  "
                       f"{','.join(o['nodes']) or '-':18} {_holders(o['holders'])}")


def _holders(holders: list[str]) -> str:
    """The reference kinds holding an object, as `ray memory` lists them."""
    names = {"owner": "LOCAL_REFERENCE (owner)", "p": "BORROWED by process", "o": "CAPTURED_IN_OBJECT"}
    out = []
    for h in holders:
        kind, _, who = h.partition(":")
        out.append(names["owner"] if kind == "owner" else f"{names.get(kind, kind)} {who}")
    return "; ".join(out) or "-"


def _mib(value: Any) -> str:
    return f"{int(value or 0) / 2**20:8.1f}Mi"


def _usage(node: dict) -> str:
    total, avail = node["resources_total"], node["resources_available"]
    return "  ".join(f"{k} {total[k] - avail.get(k, 0.0):g}/{total[k]:g}" for k in sorted(total))


def _connect(address: str | None) -> Any:
    from .store import Store

    url = _canonical(address) or _services.current_cluster_address()
    if url is None:
        raise click.UsageError("no cluster found: pass --address or start one with 'taskmesh start --head'")
    return Store(url)


@main.command(name="list")
@click.argument("what", type=click.Choice(["actors", "nodes", "objects", "jobs"]))
@_address_option(required=False)
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only rows whose KEY equals VALUE (repeatable), e.g. --filter state=ALIVE.")
def list_(what: str, address: str | None, filters: tuple[str, ...]) -> None:
    """List actors, nodes, objects or jobs, read from Redis."""
    wanted = []
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {f!r}", param_hint="--filter")
        wanted.append((key, value))
    store = _connect(address)
    try:
        if what == "actors":
            columns = ["actor_id", "class_name", "state", "name", "namespace", "node_id", "pid", "restarts"]
            rows = store.actors()
        elif what == "nodes":
            columns = ["node_id", "state", "ip", "hostname", "pid"]
            rows = [{**n, "state": "ALIVE" if n["alive"] else "DEAD"} for n in store.nodes()]
        elif what == "objects":
            columns = ["object_id", "kind", "size", "owner", "nodes", "holders"]
            rows = [{**o, "nodes": ",".join(o["nodes"]), "holders": ",".join(o["holders"])}
                    for o in store.object_summaries()]
        else:
            columns = ["job_id", "state", "namespace", "driver_pid", "host", "start_ms", "end_ms"]
            rows = store.job_infos()
    finally:
        store.close()
    rows = [r for r in rows if all(str(r.get(k, "")) == v for k, v in wanted)]
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        click.echo("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    click.echo(f"{len(rows)} {what}")


@main.command()
@click.option("--quick", is_flag=True, help="Fewer iterations (a smoke run).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
def microbenchmark(quick: bool, as_json: bool) -> None:
    """Run Ray's core microbenchmarks on a local taskmesh cluster."""
    from . import microbenchmark as mb

    results = mb.run_all("taskmesh", quick=quick)
    if as_json:
        click.echo(json.dumps(results))
    else:
        for row in results:
            click.echo(f"{row['name']:<40} {row['value']:>12.1f} {row['unit']}")


if __name__ == "__main__":
    sys.exit(main())
