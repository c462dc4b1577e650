"""Custom metrics (taskmesh.util.metrics), used as Ray's documentation shows, recorded
from tasks, actors and the driver and read back in Prometheus' text format."""

from __future__ import annotations

import pickle

import pytest

from conftest import wait_until
from taskmesh.store import Store
from taskmesh.util.metrics import Counter, Gauge, Histogram, prometheus_text


def _exported(ray) -> str:
    from taskmesh._core.context import get_runtime

    return prometheus_text(get_runtime().store.metrics())


def _has(text: str, line: str) -> bool:
    return line in text.splitlines()


def test_counter_from_tasks_is_summed_over_workers(ray) -> None:
    @ray.remote
    def handle(route: str) -> None:
        counter = Counter("requests", description="Requests handled.", tag_keys=("route",))
        counter.inc(tags={"route": route})
        counter.inc(2, tags={"route": route})

    ray.get([handle.remote("/a") for _ in range(4)] + [handle.remote("/b")])
    text = wait_until(lambda: t if _has(t := _exported(ray), 'requests_total{route="/a"} 12') else None,
                      what="the counter of /a")
    assert _has(text, 'requests_total{route="/b"} 3')
    assert _has(text, "# TYPE requests_total counter")
    assert _has(text, "# HELP requests_total Requests handled.")


def test_gauge_and_default_tags_from_an_actor(ray) -> None:
    @ray.remote
    class Queue:
        def __init__(self) -> None:
            self.gauge = Gauge("queue_depth", description="Items waiting.", tag_keys=("queue",))
            self.gauge.set_default_tags({"queue": "jobs"})

        def set_depth(self, n: int) -> None:
            self.gauge.set(n)

    q = Queue.remote()
    ray.get(q.set_depth.remote(7))
    ray.get(q.set_depth.remote(3))
    wait_until(lambda: _has(_exported(ray), 'queue_depth{queue="jobs"} 3'), what="the gauge")
    assert _has(_exported(ray), "# TYPE queue_depth gauge")


def test_histogram_buckets_are_cumulative(ray, shared_cluster) -> None:
    latency = Histogram("latency_s", description="Latency.", boundaries=[0.1, 1.0], tag_keys=("op",))
    for value in (0.05, 0.5, 0.7, 3.0):
        latency.observe(value, tags={"op": "read"})
    ray.shutdown()  # sends what the driver recorded since the last periodic flush
    store = Store(shared_cluster.url)
    try:
        text = prometheus_text(store.metrics())
    finally:
        store.close()
    for line in ('latency_s_bucket{op="read",le="0.1"} 1', 'latency_s_bucket{op="read",le="1.0"} 3',
                 'latency_s_bucket{op="read",le="+Inf"} 4', 'latency_s_count{op="read"} 4',
                 'latency_s_sum{op="read"} 4.25', "# TYPE latency_s histogram"):
        assert _has(text, line), (line, text)


def test_metric_arguments_are_checked_as_ray_checks_them() -> None:
    with pytest.raises(ValueError, match="Empty name"):
        Counter("")
    with pytest.raises(TypeError, match="tag_keys should be a tuple"):
        Counter("c", tag_keys=["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="boundaries argument should be provided"):
        Histogram("h")
    with pytest.raises(ValueError, match="Use positive values"):
        Histogram("h", boundaries=[0, 1])
    counter = Counter("c", tag_keys=("a",))
    with pytest.raises(ValueError, match="value must be >0"):
        counter.inc(0)
    with pytest.raises(ValueError, match="Missing value for tag key"):
        counter.inc()
    with pytest.raises(ValueError, match="Unrecognized tag key b"):
        counter.set_default_tags({"b": "x"})
    with pytest.raises(TypeError, match="Tag values must be str"):
        counter.inc(tags={"a": 1})  # type: ignore[dict-item]
    with pytest.warns(UserWarning, match="Invalid metric name"):
        Gauge("1bad")
    assert counter.set_default_tags({"a": "x"}) is counter
    clone = pickle.loads(pickle.dumps(Histogram("h2", boundaries=[1.0], tag_keys=("k",))))
    assert clone.info == {"name": "h2", "description": "", "tag_keys": ("k",), "default_tags": {},
                          "boundaries": [1.0]}
