"""Custom metrics with Ray's API (`ray.util.metrics`): Counter, Gauge, Histogram.

Recording is a dict update in the calling process; a background thread sends what was
recorded since its last run every `TASKMESH_METRICS_REPORT_INTERVAL_S` (1 s by default)
in one pipelined round trip, and `shutdown()` sends the rest. Redis holds the cluster-wide
totals (`Keys.metrics`, `Keys.metric`): counters and histogram buckets are summed over
every process (HINCRBYFLOAT), a gauge keeps the last value set anywhere for its tags.
`taskmesh metrics` prints them in Prometheus' text format (and can serve them over HTTP).

Example (as in Ray's documentation)::

    from taskmesh.util.metrics import Counter

    @taskmesh.remote
    class MyActor:
        def __init__(self):
            self.counter = Counter("num_requests", description="Requests handled.",
                                   tag_keys=("actor_name",))
            self.counter.set_default_tags({"actor_name": "my_actor"})

        def process(self):
            self.counter.inc()
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from taskmesh._base import config

__all__ = ["Counter", "Gauge", "Histogram"]

ENV_REPORT_INTERVAL_S = config.METRICS_REPORT_INTERVAL_S.name
# Separates a histogram series' tags from its bucket/sum/count part in a Redis field.
SERIES_SEP = "\x1f"
_VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
log = logging.getLogger("taskmesh.metrics")


class Metric:
    """What Counter, Gauge and Histogram share: name, description, tag keys, default tags."""

    _type = ""
    _definition_json: str  # _definition(), kept on the instance by the recorder once computed

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None):
        if len(name) == 0:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        self._discard = not _VALID_NAME.match(name)
        if self._discard:
            warnings.warn(f"Invalid metric name: {name}. Metric will be discarded and data will not "
                          "be collected or published. Metric names can only contain letters, numbers, "
                          "_, and :. Metric names cannot start with numbers.", UserWarning, stacklevel=3)
        self._name = name
        self._description = description
        self._default_tags: dict[str, str] = {}
        self._tag_keys = tag_keys or ()
        if not isinstance(self._tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(self._tag_keys)}")
        for key in self._tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")

    def set_default_tags(self, default_tags: dict[str, str]) -> Metric:
        """Tags used by every record call that does not give them; returns the metric."""
        for key, val in default_tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key}.")
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
        self._default_tags = default_tags
        return self

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": self._default_tags}

    def _definition(self) -> str:
        return json.dumps({"type": self._type, "description": self._description,
                           "tag_keys": list(self._tag_keys)})

    def _series(self, tags: dict[str, str] | None) -> str | None:
        """The series' Redis field (its tags as JSON); None for a discarded metric."""
        if self._discard:
            return None
        if tags:
            for val in tags.values():
                if not isinstance(val, str):
                    raise TypeError(f"Tag values must be str, got {type(val)}.")
            final = {**self._default_tags, **tags}
        else:
            final = self._default_tags
        missing = [k for k in self._tag_keys if k not in final]
        if missing:
            raise ValueError(f"Missing value for tag key(s): {','.join(missing)}.")
        return json.dumps({k: final[k] for k in self._tag_keys}, sort_keys=True)

    def __reduce__(self) -> Any:
        return self.__class__, (self._name, self._description, self._tag_keys)


def _check_value(value: Any) -> None:
    if not isinstance(value, (int, float)):
        raise TypeError(f"value must be int or float, got {type(value)}.")


class Counter(Metric):
    """A cumulative count that only goes up (Prometheus' counter, exported as
    `<name>_total`)."""

    _type = "counter"

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        _check_value(value)
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        series = self._series(tags)
        if series is not None:
            _recorder.increment(self, series, float(value))


class Gauge(Metric):
    """The last value set (Prometheus' gauge)."""

    _type = "gauge"

    def set(self, value: float | None, tags: dict[str, str] | None = None) -> None:
        if value is None:
            return
        _check_value(value)
        series = self._series(tags)
        if series is not None:
            _recorder.set(self, series, float(value))


class Histogram(Metric):
    """Observations counted in buckets with the given upper bounds (Prometheus' histogram)."""

    _type = "histogram"

    def __init__(self, name: str, description: str = "", boundaries: Sequence[float] | None = None,
                 tag_keys: tuple[str, ...] | None = None):
        super().__init__(name, description, tag_keys)
        if boundaries is None or len(boundaries) == 0:
            raise ValueError("boundaries argument should be provided when using the Histogram class. "
                             'e.g., Histogram("name", boundaries=[1.0, 2.0])')
        for i, boundary in enumerate(boundaries):
            if boundary <= 0:
                raise ValueError(f"Invalid `boundaries` argument at index {i}, {boundaries}. Use "
                                 "positive values for the arguments.")
        self.boundaries = list(boundaries)
        self._sorted = sorted(float(b) for b in self.boundaries)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        _check_value(value)
        series = self._series(tags)
        if series is None:
            return
        bucket = next((b for b in self._sorted if value <= b), math.inf)
        _recorder.observe(self, series, _bucket_label(bucket), float(value))

    @property
    def info(self) -> dict[str, Any]:
        return {**super().info, "boundaries": self.boundaries}

    def _definition(self) -> str:
        return json.dumps({"type": self._type, "description": self._description,
                           "tag_keys": list(self._tag_keys), "boundaries": self._sorted})

    def __reduce__(self) -> Any:
        return Histogram, (self._name, self._description, self.boundaries, self._tag_keys)


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


# ---- recording and sending -----------------------------------------------------------------

class _Recorder:
    """What this process recorded since its last flush, and the thread that sends it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._definitions: dict[str, str] = {}  # sent with every flush that uses them
        self._increments: dict[tuple[str, str], float] = {}
        self._values: dict[tuple[str, str], float] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def _define(self, metric: Metric) -> None:
        definition = metric.__dict__.get("_definition_json")
        if definition is None:
            definition = metric._definition_json = metric._definition()
        self._definitions[metric._name] = definition

    def increment(self, metric: Metric, series: str, value: float) -> None:
        key = (metric._name, series)
        with self._lock:
            self._define(metric)
            self._increments[key] = self._increments.get(key, 0.0) + value
        self._start()

    def set(self, metric: Metric, series: str, value: float) -> None:
        with self._lock:
            self._define(metric)
            self._values[(metric._name, series)] = value
        self._start()

    def observe(self, metric: Metric, series: str, bucket: str, value: float) -> None:
        with self._lock:
            self._define(metric)
            for part, delta in ((f"bucket{SERIES_SEP}{bucket}", 1.0), ("sum", value), ("count", 1.0)):
                key = (metric._name, f"{series}{SERIES_SEP}{part}")
                self._increments[key] = self._increments.get(key, 0.0) + delta
        self._start()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._loop, name="taskmesh-metrics", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        interval_s = config.METRICS_REPORT_INTERVAL_S.get()
        while True:
            self._wake.wait(interval_s)
            self._wake.clear()
            try:
                from taskmesh._core.context import get_runtime

                self.flush(get_runtime().store)
            except RuntimeError:
                pass  # not connected (yet, or any more): kept for the next try
            except Exception as e:
                log.warning("sending metrics failed (kept for the next try): %r", e)

    def flush(self, store: Any) -> None:
        with self._lock:
            definitions, self._definitions = self._definitions, {}
            increments, self._increments = self._increments, {}
            values, self._values = self._values, {}
        if not (definitions or increments or values):
            return
        try:
            store.record_metrics(definitions, increments, values)
        except Exception:
            with self._lock:  # put back, merged with what was recorded meanwhile
                for name, definition in definitions.items():
                    self._definitions.setdefault(name, definition)
                for key, delta in increments.items():
                    self._increments[key] = self._increments.get(key, 0.0) + delta
                for key, value in values.items():
                    self._values.setdefault(key, value)
            raise


_recorder = _Recorder()


def flush_now(store: Any) -> None:
    """Send what this process recorded (called by `shutdown()`)."""
    try:
        _recorder.flush(store)
    except Exception as e:
        log.warning("sending metrics at shutdown failed: %r", e)


# ---- export --------------------------------------------------------------------------------

def _labels(tags: dict[str, str], extra: dict[str, str] | None = None) -> str:
    merged = {**tags, **(extra or {})}
    if not merged:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in merged.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def prometheus_text(metrics: Sequence[tuple[str, str, dict[str, float]]]) -> str:
    """Prometheus' text exposition format of `Store.metrics()`."""
    out: list[str] = []
    for name, raw_definition, series in metrics:
        definition = json.loads(raw_definition)
        kind = definition.get("type", "gauge")
        help_text = _escape(definition.get("description", "")) or name
        exported = f"{name}_total" if kind == "counter" else name
        out += [f"# HELP {exported} {help_text}", f"# TYPE {exported} {kind}"]
        if kind != "histogram":
            for field, value in sorted(series.items()):
                out.append(f"{exported}{_labels(json.loads(field))} {_number(value)}")
            continue
        for tags, buckets, total, count in histogram_series(definition, series):
            for bound, cumulative in buckets:
                out.append(f"{name}_bucket{_labels(tags, {'le': bound})} {_number(cumulative)}")
            out.append(f"{name}_sum{_labels(tags)} {_number(total)}")
            out.append(f"{name}_count{_labels(tags)} {_number(count)}")
    return "\n".join(out) + ("\n" if out else "")


def histogram_series(definition: dict[str, Any], series: dict[str, float]) -> list[
        tuple[dict[str, str], list[tuple[str, float]], float, float]]:
    """A histogram's series as Prometheus shows them: (tags, [(upper bound, cumulative
    count)], sum, count) per set of tags, from its Redis fields."""
    grouped: dict[str, dict[str, float]] = {}
    for field, value in series.items():
        tags, _, part = field.partition(SERIES_SEP)
        grouped.setdefault(tags, {})[part] = value
    bounds = [_bucket_label(b) for b in definition.get("boundaries", [])] + ["+Inf"]
    out = []
    for tags_json, parts in sorted(grouped.items()):
        cumulative, buckets = 0.0, []
        for bound in bounds:
            cumulative += parts.get(f"bucket{SERIES_SEP}{bound}", 0.0)
            buckets.append((bound, cumulative))
        out.append((json.loads(tags_json), buckets, parts.get("sum", 0.0), parts.get("count", 0.0)))
    return out
