"""The `@remote` / `.options()` option tables, checked at decoration and in `.options()`.

Names, types and messages follow Ray's option table, so a program that Ray rejects is
rejected here with the same exception type, naming the option. Options Ray accepts that
taskmesh does not implement yet raise NotImplementedError instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_UNSET = object()


@dataclass(frozen=True, slots=True)
class Option:
    types: tuple[type, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    default: Any = None
    supported: bool = True

    def validate(self, name: str, value: Any) -> None:
        if self.types is not None and not isinstance(value, self.types):
            raise TypeError(
                f"The type of keyword '{name}' must be {self.types}, but received type {type(value)}"
            )
        if self.check is not None:
            message = self.check(value)
            if message:
                raise ValueError(message)


def _resource_check(name: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return f"The keyword '{name}' must be a number, not a bool."
        if value < 0:
            return f"The keyword '{name}' only accepts a non-negative number, got {value}."
        if value > 1 and float(value) != int(value):
            return f"The keyword '{name}': resource quantities >1 must be whole numbers, got {value}."
        return None

    return check


def _check_resources(value: Any) -> str | None:
    if value is None:
        return None
    for key, amount in value.items():
        if not isinstance(key, str):
            return f"The keys of 'resources' must be strings, got {key!r}."
        if key in ("CPU", "GPU"):
            return ("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' "
                    "in 'resources' keyword")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            return f"The value of resource {key!r} in 'resources' must be a number, got {amount!r}."
        message = _resource_check(f"resources[{key!r}]")(amount)
        if message:
            return message
    return None


def _check_num_returns(value: Any) -> str | None:
    if value is None or value in ("streaming", "dynamic"):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return ("The keyword 'num_returns' only accepts None, a non-negative integer, "
                "'streaming' (for generators), or 'dynamic'")
    return None


def _check_max_retries(value: Any) -> str | None:
    if value is not None and value < -1:
        return "The keyword 'max_retries' only accepts 0, -1 or a positive integer."
    return None


def _check_retry_exceptions(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if all(isinstance(e, type) and issubclass(e, BaseException) for e in value):
        return None
    return "The keyword 'retry_exceptions' only accepts a bool or a list of exception types."


def _check_strategy(value: Any) -> str | None:
    if value is None or value in ("DEFAULT", "SPREAD"):
        return None
    if isinstance(value, str):
        return (f"Invalid scheduling_strategy {value!r}: use 'DEFAULT', 'SPREAD' or a "
                "scheduling strategy object.")
    return None


def _check_non_negative(name: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is not None and value < 0:
            return f"The keyword '{name}' only accepts 0 or a positive integer."
        return None

    return check


_NUMBER = (int, float, type(None))

COMMON_OPTIONS: dict[str, Option] = {
    "num_cpus": Option(_NUMBER, _resource_check("num_cpus")),
    "num_gpus": Option(_NUMBER, _resource_check("num_gpus")),
    "memory": Option(_NUMBER, _resource_check("memory")),
    "resources": Option((dict, type(None)), _check_resources),
    "name": Option((str, type(None))),
    "scheduling_strategy": Option(None, _check_strategy),
    "accelerator_type": Option((str, type(None)), supported=False),
    "object_store_memory": Option(_NUMBER, supported=False),
    "placement_group": Option(None, supported=False),
    "placement_group_bundle_index": Option((int,), supported=False),
    "placement_group_capture_child_tasks": Option((bool, type(None)), supported=False),
    "runtime_env": Option((dict, type(None)), supported=False),
    "label_selector": Option((dict, type(None)), supported=False),
    "enable_task_events": Option((bool,), default=True),
    "_metadata": Option((dict, type(None))),
}

TASK_OPTIONS: dict[str, Option] = {
    **COMMON_OPTIONS,
    "num_returns": Option((int, str, type(None)), _check_num_returns, default=1),
    "max_retries": Option((int, type(None)), _check_max_retries, default=3),
    "retry_exceptions": Option((bool, list, tuple), _check_retry_exceptions, default=False),
    "max_calls": Option((int, type(None)), _check_non_negative("max_calls"), default=0),
    "_generator_backpressure_num_objects": Option((int, type(None)), supported=False),
}

def _check_lifetime(value: Any) -> str | None:
    if value not in (None, "detached", "non_detached"):
        return ("actor `lifetime` argument must be one of 'detached', 'non_detached' and "
                f"'None', got {value!r}.")
    return None


def _check_restarts(name: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is not None and value < -1:
            return f"The keyword '{name}' only accepts -1, 0 or a positive integer."
        return None

    return check


def _check_max_concurrency(value: Any) -> str | None:
    if value is not None and value < 1:
        return "The keyword 'max_concurrency' must be >= 1."
    return None


def _check_concurrency_groups(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "The keyword 'concurrency_groups' must be a dict of group name -> max concurrency."
    for name, limit in value.items():
        if not isinstance(name, str) or isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return (f"concurrency_groups[{name!r}] must map a group name to a positive integer, "
                    f"got {limit!r}.")
    return None


ACTOR_OPTIONS: dict[str, Option] = {
    **COMMON_OPTIONS,
    "concurrency_groups": Option((dict, list, type(None)), _check_concurrency_groups),
    "lifetime": Option((str, type(None)), _check_lifetime),
    "max_concurrency": Option((int, type(None)), _check_max_concurrency),
    "max_restarts": Option((int,), _check_restarts("max_restarts"), default=0),
    "max_task_retries": Option((int,), _check_restarts("max_task_retries"), default=0),
    "max_pending_calls": Option((int,), supported=False),
    "namespace": Option((str, type(None))),
    "get_if_exists": Option((bool,), default=False),
    "allow_out_of_order_execution": Option((bool,), supported=False),
}


def validate(options: Mapping[str, Any], table: Mapping[str, Option], what: str) -> dict[str, Any]:
    """Check every option against `table`; return them unchanged when all are valid."""
    for name, value in options.items():
        option = table.get(name)
        if option is None:
            raise ValueError(
                f"Invalid option keyword {name} for {what}. Valid ones are {sorted(table)}."
            )
        option.validate(name, value)
        if not option.supported:
            raise NotImplementedError(
                f"The option '{name}' is a valid Ray option for {what}, but taskmesh does not "
                "support it yet; remove it to run this program."
            )
    return dict(options)


def resolved(options: Mapping[str, Any], table: Mapping[str, Option]) -> dict[str, Any]:
    """Options with the table's defaults filled in for the ones not given (or None)."""
    out = {name: opt.default for name, opt in table.items()}
    out.update({k: v for k, v in options.items() if v is not None})
    return out


def task_demand(options: Mapping[str, Any]) -> dict[str, float]:
    """The resources a task needs while it runs (Ray's default: 1 CPU)."""
    demand: dict[str, float] = {}
    num_cpus = options.get("num_cpus")
    demand["CPU"] = 1.0 if num_cpus is None else float(num_cpus)
    if options.get("num_gpus"):
        demand["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        demand["memory"] = float(options["memory"])
    for key, amount in (options.get("resources") or {}).items():
        demand[key] = float(amount)
    return demand
