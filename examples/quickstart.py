"""A Ray Core program, unchanged but for the import: runs on an embedded Redis.

    python examples/quickstart.py
"""

import time

import numpy as np

import taskmesh as ray


@ray.remote
def square(x):
    return x * x


@ray.remote(num_returns=2)
def split(values):
    half = len(values) // 2
    return values[:half], values[half:]


@ray.remote
def total(values):
    return sum(values)


@ray.remote
def fan_out(n):
    # Tasks can submit tasks; a task blocked in get lends its CPU to its children.
    return sum(ray.get([square.remote(i) for i in range(n)]))


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


@ray.remote
def column_means(matrix):
    # A large array argument arrives zero-copy: a read-only view of shared memory.
    return matrix.mean(axis=0), matrix.flags.writeable


@ray.remote(max_retries=0)
def fails():
    raise ValueError("tasks raise like local code")


def main() -> None:
    start = time.perf_counter()
    ray.init()
    print(f"cluster up in {time.perf_counter() - start:.2f}s: {ray.cluster_resources()}")

    squares = ray.get([square.remote(i) for i in range(10)])
    print("squares:", squares)

    data = ray.put(list(range(100)))  # stored once, passed by reference
    left, right = split.remote(data)
    print("sum of halves:", ray.get(total.remote(left)) + ray.get(total.remote(right)))

    print("nested fan-out:", ray.get(fan_out.remote(20)))

    counter = Counter.remote()
    ray.get([counter.add.remote(i) for i in range(10)])
    print("actor state:", ray.get(counter.add.remote(0)))

    matrix = ray.put(np.ones((4000, 5000)))  # 160 MB, written once into shared memory
    start = time.perf_counter()
    same = ray.get(matrix)
    print(f"get of 160 MB: {1000 * (time.perf_counter() - start):.2f} ms, "
          f"writeable={same.flags.writeable} (zero-copy)")
    means, writeable = ray.get(column_means.remote(matrix))
    print(f"column means {means[:3]}... (task saw writeable={writeable})")
    del same, matrix

    ready, pending = ray.wait([square.remote(7), fan_out.remote(5)], num_returns=1, timeout=10)
    print(f"wait: {len(ready)} ready, {len(pending)} pending")

    try:
        ray.get(fails.remote())
    except ValueError as e:  # also a ray.exceptions.RayTaskError
        print("caught:", type(e).__name__, "->", str(e).splitlines()[-1].strip())

    start = time.perf_counter()
    ray.get([square.remote(i) for i in range(2000)])
    print(f"2000 tasks in {time.perf_counter() - start:.2f}s")
    ray.shutdown()


if __name__ == "__main__":
    main()
