"""A Ray Core program, unchanged but for the import: runs on an embedded Redis.

    python examples/quickstart.py
"""

import time

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
