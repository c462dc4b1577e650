"""The cluster's built-in Prometheus metrics, and the users' (taskmesh.util.metrics).

`render(store)` reads everything from Redis in two pipelined round trips
(`Store.metrics_snapshot`: no scan of the keyspace or of the task events) and returns the
exposition text of prometheus_client with its content type; `taskmesh metrics` prints or
serves it, and the dashboard's /metrics serves the same. Task counts come from the
counters the writers of task events add with each batch (`tm:task_counts`), so tasks
submitted with `enable_task_events=False` are not counted, and a node that dies with
running tasks leaves them counted as running.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from taskmesh._base import queues, wire
from taskmesh.util.metrics import histogram_series

__all__ = ["ClusterCollector", "registry", "render"]

_TASK_HELP = {
    "submitted": "Tasks and actor creations submitted, by function name.",
    "retried": "Task attempts queued again after a failure (retries), by function name.",
    "started": "Task attempts that started running, by function name.",
    "finished": "Task attempts that finished, by function name.",
    "failed": "Task attempts that failed (an exception, or their worker died), by function name.",
}


class ClusterCollector(Collector):
    """Collects the metrics of the cluster behind `store` on each scrape."""

    def __init__(self, store: Any):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        snap = self.store.metrics_snapshot()
        yield from _task_metrics(snap.task_counts)
        depth = GaugeMetricFamily("taskmesh_queue_depth", "Entries in a task queue not yet done "
                                  "(waiting or leased), by queue and kind (shape, node, bundle).",
                                  labels=["queue", "kind"])
        for name, n in snap.queue_depths.items():
            depth.add_metric([name, _queue_kind(name)], n)
        yield depth
        actors = GaugeMetricFamily("taskmesh_actors", "Actors by state.", labels=["state"])
        for state in sorted(set(snap.actor_states)):
            actors.add_metric([state], snap.actor_states.count(state))
        yield actors
        yield from _node_metrics(snap.nodes)
        yield GaugeMetricFamily("taskmesh_dead_letters", "Malformed queue entries set aside in the "
                                "dead-letter stream (the newest ~10,000 are kept).", value=snap.dead_letters)
        yield from user_metrics(snap.user)


def _queue_kind(name: str) -> str:
    if queues.is_shape_queue(name):
        return "shape"
    return "bundle" if queues.is_bundle_queue(name) else "node"


def _task_metrics(counts: dict[str, int]) -> Iterator[Metric]:
    by_counter: dict[str, dict[str, int]] = {c: {} for c in wire.TASK_COUNTERS}
    for field, n in counts.items():
        counter, name = wire.task_count_of(field)
        if counter in by_counter:
            by_counter[counter][name] = n
    for counter in wire.TASK_COUNTERS:
        family = CounterMetricFamily(f"taskmesh_tasks_{counter}", _TASK_HELP[counter], labels=["name"])
        for name, n in sorted(by_counter[counter].items()):
            family.add_metric([name], n)
        yield family
    running = GaugeMetricFamily("taskmesh_tasks_running", "Task attempts running now (started, not "
                                "ended), by function name.", labels=["name"])
    ended = {name: by_counter["finished"].get(name, 0) + by_counter["failed"].get(name, 0)
             for name in by_counter["started"]}
    for name, started in sorted(by_counter["started"].items()):
        running.add_metric([name], max(0, started - ended[name]))
    yield running


def _node_metrics(nodes: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    state = GaugeMetricFamily("taskmesh_nodes", "Nodes by state (alive, dead).", labels=["state"])
    alive = [node_id for node_id, info in nodes.items() if info["alive"] and info.get("state") == "ALIVE"]
    state.add_metric(["alive"], len(alive))
    state.add_metric(["dead"], len(nodes) - len(alive))
    yield state
    total = GaugeMetricFamily("taskmesh_node_resources", "Resources of an alive node "
                              "(CPU, GPU, memory in bytes, custom).", labels=["node", "resource"])
    used = GaugeMetricFamily("taskmesh_node_resources_used", "Resources of an alive node taken by "
                             "tasks, actors and placement groups.", labels=["node", "resource"])
    store = {field: GaugeMetricFamily(f"taskmesh_object_store_{what}_bytes", text, labels=["node"])
             for field, what, text in (
                 ("store_capacity", "capacity", "Shared-memory object store capacity of an alive node."),
                 ("store_used", "used", "Bytes of objects in an alive node's shared memory."),
                 ("store_spilled", "spilled", "Bytes of objects an alive node spilled to disk."))}
    for node_id in alive:
        info = nodes[node_id]
        try:
            have = wire.node_resources(info.get("resources_total"), "resources_total")
            free = wire.node_resources(info.get("resources_available"), "resources_available")
        except wire.WireError:
            continue  # a node hash written by hand: listed as not alive elsewhere
        for resource, amount in sorted(have.items()):
            total.add_metric([node_id, resource], amount)
            used.add_metric([node_id, resource], max(0.0, amount - free.get(resource, amount)))
        for field, family in store.items():
            try:
                family.add_metric([node_id], float(info.get(field) or 0))
            except ValueError:
                pass
    yield total
    yield used
    yield from store.values()


def user_metrics(metrics: list[tuple[str, str, dict[str, float]]]) -> Iterator[Metric]:
    """The users' metrics (`Store.metrics()`, recorded by taskmesh.util.metrics) as
    prometheus_client families: a counter is exported as `<name>_total`, as before."""
    for name, raw_definition, series in metrics:
        try:
            definition = json.loads(raw_definition)
        except ValueError:
            continue
        kind = definition.get("type", "gauge")
        help_text = definition.get("description", "") or name
        tag_keys = list(definition.get("tag_keys", []))
        if kind == "histogram":
            histogram = HistogramMetricFamily(name, help_text, labels=tag_keys)
            for tags, buckets, total, _ in histogram_series(definition, series):
                histogram.add_metric([str(tags.get(k, "")) for k in tag_keys], buckets, total)
            yield histogram
            continue
        family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
            name, help_text, labels=tag_keys)
        for field, value in sorted(series.items()):
            tags = json.loads(field)
            family.add_metric([str(tags.get(k, "")) for k in tag_keys], value)
        yield family


def registry(store: Any) -> CollectorRegistry:
    """A private registry holding only the cluster's collector (not the process's
    default metrics), for `generate_latest` or prometheus_client's servers."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ClusterCollector(store))
    return reg


def render(store: Any) -> tuple[bytes, str]:
    """The cluster's metrics in Prometheus' text format, and its content type."""
    return generate_latest(registry(store)), CONTENT_TYPE_LATEST
