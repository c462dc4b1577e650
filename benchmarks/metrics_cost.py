"""What a scrape of the built-in metrics costs Redis (taskmesh only).

    python benchmarks/metrics_cost.py [--scrapes N]

Starts a Redis and a 4-node cluster on this machine, runs a few tasks and actors, then
renders the metrics (`taskmesh.dashboard.metrics.render`, what `taskmesh metrics --serve`
answers a scrape with) N times on a connection of its own, and counts the commands Redis
received from that connection (MONITOR) and the round trips it made. Then the same after
2,000 more tasks: the cost does not grow with the tasks run.
Prints commands and round trips per scrape, and Redis commands per second at a 15 s
scrape interval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from a checkout: taskmesh is imported from it

from scheduling import Cluster, noop  # noqa: E402

import taskmesh  # noqa: E402
from taskmesh.dashboard import metrics  # noqa: E402
from taskmesh.store import Store  # noqa: E402

INTERVAL_S = 15.0


@taskmesh.remote(num_cpus=0)
class Idle:
    def ping(self) -> int:
        return 1


def per_scrape(url: str, scrapes: int) -> tuple[float, float]:
    """(commands, round trips) per render, counted with MONITOR: the commands Redis
    received from the scraping connection, and the pipelines (or single commands) sent."""
    store = Store(url)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        with Store(url).redis.monitor() as monitor:  # a connection of its own
            ready.set()
            for command in monitor.listen():
                if stop.is_set():
                    return
                if int(command.get("client_port") or 0) == port:
                    seen.append(command["command"])

    try:
        metrics.render(store)  # connects: its one connection is reused by every render
        conn = store.redis.connection_pool.get_connection()
        port = conn._sock.getsockname()[1]  # type: ignore[union-attr]
        store.redis.connection_pool.release(conn)
        ready = threading.Event()
        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        ready.wait(5)
        time.sleep(0.2)
        trips = 0
        original = store.redis.connection_pool.get_connection

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal trips
            trips += 1
            return original(*args, **kwargs)

        store.redis.connection_pool.get_connection = counted  # type: ignore[method-assign]
        for _ in range(scrapes):
            metrics.render(store)
        store.redis.connection_pool.get_connection = original  # type: ignore[method-assign]
        time.sleep(0.5)
        stop.set()
        store.redis.ping()  # wakes the monitor
        thread.join(5)
        kinds: dict[str, int] = {}
        for command in seen:
            kinds[command.split()[0]] = kinds.get(command.split()[0], 0) + 1
        print("  per scrape:", ", ".join(f"{k} {n / scrapes:g}" for k, n in sorted(kinds.items())))
        return len(seen) / scrapes, trips / scrapes
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), 4, 1)
        try:
            actors = [Idle.remote() for _ in range(4)]
            taskmesh.get([a.ping.remote() for a in actors] + [noop.remote() for _ in range(20)])
            time.sleep(1)
            url = cluster.redis.url
            for label in ("idle 4 nodes, 4 actors", "after 2,000 more tasks"):
                commands, trips = per_scrape(url, args.scrapes)
                print(f"{label}: {commands:.1f} Redis commands and {trips:.1f} round trips per scrape; "
                      f"{commands / INTERVAL_S:.2f} commands/s at a {INTERVAL_S:.0f} s interval")
                taskmesh.get([noop.remote() for _ in range(2000)])
                time.sleep(1)
        finally:
            cluster.close()


if __name__ == "__main__":
    main()
