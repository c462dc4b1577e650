"""Ray's path `ray.cloudpickle`: the cloudpickle that taskmesh serializes with, so code
written as `from ray import cloudpickle` or `ray.cloudpickle.dumps(...)` runs unchanged.
Ray bundles its own copy; taskmesh uses the installed `cloudpickle` package."""

from cloudpickle import (
    CloudPickler,
    Pickler,
    __version__,
    dump,
    dumps,
    load,
    loads,
    register_pickle_by_value,
    unregister_pickle_by_value,
)

__all__ = ["CloudPickler", "Pickler", "__version__", "dump", "dumps", "load", "loads",
           "register_pickle_by_value", "unregister_pickle_by_value"]
