"""The per-process runtime that drivers and workers share: the runtime slot
(`context`), reference counting, submission, completions, generators, options,
routing, placement groups and the failure policies. It imports only objects, store
and the leaves; the public face (`api`, `remote_function`, `actor`) and `util` sit on
top of it."""
