"""Tools that run a cluster rather than being part of one: the seeded kill -9 chaos run
and the microbenchmarks that `benchmarks/run.py` and `taskmesh microbenchmark` use."""
