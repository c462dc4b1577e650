"""The `@remote` / `.options()` option tables, checked at decoration and in `.options()`.

Names, types and messages follow Ray's option table, so a program that Ray rejects is
rejected here with the same exception type, naming the option. Options Ray accepts that
taskmesh does not implement yet raise NotImplementedError instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from taskmesh._base import deprecation
from taskmesh._core import strategies as ss

_UNSET = object()


@dataclass(frozen=True, slots=True)
class Option:
    types: tuple[type, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    default: Any = None
    # False, or a predicate of the value: a valid Ray option that taskmesh does not
    # implement (or not with that value) raises NotImplementedError.
    supported: bool | Callable[[Any], bool] = True

    def is_supported(self, value: Any) -> bool:
        return self.supported(value) if callable(self.supported) else self.supported

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


# As Ray: a custom resource cannot be called this.
RESERVED_RESOURCE = "bundle"


def check_namespace(namespace: Any) -> None:
    """Ray's check of a namespace (init's and the actor option)."""
    if namespace is None:
        return
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be None or a string, got {type(namespace)}.")
    if namespace == "":
        raise ValueError('"" is not a valid namespace. Pass None to not specify a namespace.')


def _check_resources(value: Any) -> str | None:
    if value is None:
        return None
    for key, amount in value.items():
        if not isinstance(key, str):
            return f"The keys of 'resources' must be strings, got {key!r}."
        if key in ("CPU", "GPU"):
            return ("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' "
                    "in 'resources' keyword")
        if key == RESERVED_RESOURCE:
            return (f"'{RESERVED_RESOURCE}' is a reserved resource name (placement group "
                    "bundles use it); choose another name for this custom resource.")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            return f"The value of resource {key!r} in 'resources' must be a number, got {amount!r}."
        message = _resource_check(f"resources[{key!r}]")(amount)
        if message:
            return message
    return None


def _check_num_returns(value: Any) -> str | None:
    if value is None or value == "dynamic" or value == "streaming":
        return None
    if isinstance(value, str):  # a TypeError, as Ray's comparison of the string with 0
        raise TypeError(f"The keyword 'num_returns' only accepts None, a non-negative integer, "
                        f"'streaming' or 'dynamic', got {value!r}.")
    if value >= 0:
        return None
    return ("Default None. When None is passed, The default value is 1 for a task and actor "
            "task, and 'streaming' for generator tasks and generator actor tasks. The keyword "
            "'num_returns' only accepts None, a non-negative integer, 'streaming' (for "
            "generators), or 'dynamic'. 'dynamic' flag will be deprecated in the future, and "
            "it is recommended to use 'streaming' instead.")


def validate_num_returns(is_generator: bool, num_returns: Any) -> None:
    """Ray's check of num_returns against the callable it applies to."""
    if num_returns is None:
        return
    if isinstance(num_returns, int) and num_returns < 0:
        raise ValueError(f"num_returns must be >= 0, but got {num_returns}.")
    if num_returns == "dynamic":
        deprecation.warn("num_returns='dynamic' is deprecated and will be removed in a future "
                         "release. Use num_returns='streaming' instead.", stacklevel=5)
    if num_returns in ("streaming", "dynamic") and not is_generator:
        raise ValueError(f"num_returns='{num_returns}' can only be used with generator functions "
                         "(functions that use 'yield'). The decorated function is not a "
                         "generator function.")


def _counting(name: str, infinite: bool = True) -> Callable[[Any], str | None]:
    """Ray's counting options: None, 0, a positive integer (and -1 for infinity)."""
    def check(value: Any) -> str | None:
        if value is None or value >= (-1 if infinite else 0):
            return None
        if infinite:
            return (f"The keyword '{name}' only accepts None, 0, -1 or a positive integer, "
                    "where -1 represents infinity.")
        return f"The keyword '{name}' only accepts None, 0 or a positive integer."

    return check


def _check_quantity(name: str) -> Callable[[Any], str | None]:
    """Ray's check of a resource quantity (num_cpus, memory)."""
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if value < 0:
            return f"The quantity of resource {name} cannot be negative"
        if isinstance(value, float) and value != 0.0 and int(value * 10000) == 0:
            return f"The precision of the fractional quantity of resource {name} cannot go beyond 0.0001"
        return None

    return check


def _check_retry_exceptions(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if all(isinstance(e, type) and issubclass(e, Exception) for e in value):
        return None
    return "retry_exceptions must be either a boolean or a list of exceptions"


def _check_task_object_store_memory(value: Any) -> str | None:
    return None if value is None else "Setting 'object_store_memory' is not implemented for tasks"


def _check_backpressure(value: Any) -> str | None:
    if value != 0:
        return None
    return ("_generator_backpressure_num_objects=0 is not allowed. Use a value > 0. If the "
            "value is equal to 1, the behavior is identical to Python generator (generator 1 "
            "object whenever `next` is called). Use -1 to disable this feature. ")


def _check_objects_per_yield(value: Any) -> str | None:
    if value is None or value > 0:
        return None
    return ("_num_objects_per_yield is a private streaming generator option that must be set "
            "to a positive integer.")


def _check_actor_backpressure(value: Any) -> str | None:
    if value is None or value > 0 or value == -1:
        return None
    return ("_actor_generator_backpressure_num_objects must be > 0 to cap the actor's total "
            f"unconsumed generator objects, or -1 to disable. Got {value}.")


def _unset_or(*values: Any) -> Callable[[Any], bool]:
    """Supported only with Ray's default behaviour (None or one of `values`)."""
    return lambda value: value is None or value in values


def _check_strategy(value: Any) -> str | None:
    if value is None or value in ("DEFAULT", "SPREAD"):
        return None
    if isinstance(value, str):
        return (f"Invalid scheduling_strategy {value!r}: use 'DEFAULT', 'SPREAD' or a "
                "scheduling strategy object.")
    if not isinstance(value, (ss.NodeAffinitySchedulingStrategy, ss.PlacementGroupSchedulingStrategy)):
        raise TypeError(f"The type of keyword 'scheduling_strategy' must be None, str, "
                        "PlacementGroupSchedulingStrategy or NodeAffinitySchedulingStrategy, but "
                        f"received type {type(value)}")
    return None


def _check_placement_group(value: Any) -> str | None:
    if value is None or value == "default" or isinstance(getattr(value, "id", None), ss.PlacementGroupID):
        return None
    raise TypeError("The type of keyword 'placement_group' must be None, 'default' or a "
                    f"PlacementGroup, but received type {type(value)}")


def strategy_of(options: Mapping[str, Any]) -> Any:
    """The scheduling strategy, with the deprecated placement_group options folded in
    (as Ray: both at once is an error)."""
    strategy = options.get("scheduling_strategy")
    pg = options.get("placement_group", "default")
    if pg in ("default", None):
        return strategy
    if strategy is not None:
        raise ValueError("Placement groups should be specified via the scheduling_strategy "
                         "option. The placement_group option is deprecated.")
    return ss.PlacementGroupSchedulingStrategy(
        pg, options.get("placement_group_bundle_index", -1),
        options.get("placement_group_capture_child_tasks"))


# Ray's deprecated placement-group options, and when each counts as used.
_DEPRECATED_PG_OPTIONS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("placement_group", lambda v: v != "default"),
    ("placement_group_bundle_index", lambda v: v != -1),
    ("placement_group_capture_child_tasks", bool),
)


def _warn_deprecated_placement_group(options: Mapping[str, Any]) -> None:
    """As Ray: each placement-group option used without a PlacementGroupSchedulingStrategy
    warns (it still works, folded into one by strategy_of)."""
    if isinstance(options.get("scheduling_strategy"), ss.PlacementGroupSchedulingStrategy):
        return
    for name, used in _DEPRECATED_PG_OPTIONS:
        if name in options and used(options[name]):
            deprecation.warn_user(f"{name} parameter is deprecated. Use scheduling_strategy="
                                  "PlacementGroupSchedulingStrategy(...) instead (README, Compatibility).")


def _runtime_env_check(value: Any) -> str | None:
    """Only env_vars so far: the runtime_env module raises Ray's exception types."""
    from taskmesh.runtime_env import check_option

    check_option(value)
    return None


_NUMBER = (int, float, type(None))

COMMON_OPTIONS: dict[str, Option] = {
    "num_cpus": Option(_NUMBER, _check_quantity("num_cpus")),
    "num_gpus": Option(_NUMBER, _resource_check("num_gpus")),
    "memory": Option(_NUMBER, _check_quantity("memory")),
    "resources": Option((dict, type(None)), _check_resources),
    "name": Option((str, type(None))),
    "scheduling_strategy": Option(None, _check_strategy),
    "accelerator_type": Option((str, type(None)), supported=_unset_or()),
    "object_store_memory": Option((int, type(None)), _counting("object_store_memory", False)),
    "placement_group": Option(None, _check_placement_group, default="default"),
    "placement_group_bundle_index": Option((int,), default=-1),
    "placement_group_capture_child_tasks": Option((bool, type(None))),
    "runtime_env": Option((dict, type(None)), lambda v: _runtime_env_check(v)),
    "label_selector": Option((dict, type(None)), supported=_unset_or({})),
    "fallback_strategy": Option((list, type(None)), supported=_unset_or([])),
    "enable_task_events": Option((bool,), default=True),
    "_labels": Option((dict, type(None)), supported=_unset_or({})),
}

TASK_OPTIONS: dict[str, Option] = {
    **COMMON_OPTIONS,
    "num_returns": Option((int, str, type(None)), _check_num_returns, default=None),
    "max_retries": Option((int, type(None)), _counting("max_retries"), default=3),
    "retry_exceptions": Option((bool, list, tuple), _check_retry_exceptions, default=False),
    "max_calls": Option((int, type(None)), _counting("max_calls", False), default=0),
    "object_store_memory": Option((int, type(None)), _check_task_object_store_memory),
    "_generator_backpressure_num_objects": Option((int, type(None)), _check_backpressure),
    "_num_objects_per_yield": Option((int, type(None)), _check_objects_per_yield, default=1,
                                     supported=_unset_or(1)),
}

def _check_lifetime(value: Any) -> str | None:
    if value not in (None, "detached", "non_detached"):
        return ("actor `lifetime` argument must be one of 'detached', 'non_detached' and "
                f"'None', got {value!r}.")
    return None


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
    "max_restarts": Option((int, type(None)), _counting("max_restarts"), default=0),
    "max_task_retries": Option((int, type(None)), _counting("max_task_retries"), default=0),
    "max_pending_calls": Option((int, type(None)), _counting("max_pending_calls"), default=-1,
                                supported=_unset_or(-1)),
    "namespace": Option(None, lambda v: check_namespace(v)),
    "get_if_exists": Option((bool,), default=False),
    "allow_out_of_order_execution": Option((bool, type(None)), supported=_unset_or(False)),
    "enable_tensor_transport": Option((bool, type(None)), supported=_unset_or(False)),
    "_actor_generator_backpressure_num_objects": Option((int, type(None)), _check_actor_backpressure,
                                                        supported=_unset_or(-1)),
}


def check_task_options(options: Mapping[str, Any], *, in_options: bool) -> None:
    """Ray's checks of task options beyond each option's own."""
    if in_options and "max_calls" in options:
        raise ValueError("Setting 'max_calls' is not supported in '.options()'.")
    _warn_deprecated_placement_group(options)


def check_actor_options(options: Mapping[str, Any], *, in_options: bool,
                        merged: Mapping[str, Any] | None = None) -> None:
    """Ray's checks of actor options beyond each option's own (`merged`: with the
    decorator's options, for `.options()`)."""
    if in_options and "concurrency_groups" in options:
        raise ValueError("Setting 'concurrency_groups' is not supported in '.options()'.")
    final = options if merged is None else merged
    if final.get("get_if_exists") and not final.get("name"):
        raise ValueError("The actor name must be specified to use `get_if_exists`.")
    if "object_store_memory" in options:
        deprecation.warn_user("Setting 'object_store_memory' for actors is deprecated since it "
                              "doesn't actually reserve the required object store memory.")
    _warn_deprecated_placement_group(options)


def validate(options: Mapping[str, Any], table: Mapping[str, Option], what: str) -> dict[str, Any]:
    """Check every option against `table`; return them unchanged when all are valid."""
    for name, value in options.items():
        option = table.get(name)
        if option is None:
            raise ValueError(
                f"Invalid option keyword {name} for {what}. Valid ones are {sorted(table)}."
            )
        option.validate(name, value)
        if not option.is_supported(value):
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
