"""Progress bars: taskmesh.util.progress over refs, ActorPool.map(progress=True), and
experimental.tqdm_ray bars updated inside tasks and drawn by the driver."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest

from taskmesh.util import ActorPool, progress


def test_progress_yields_every_result_and_the_bar_reaches_its_total(ray) -> None:
    @ray.remote
    def square(x: int) -> int:
        return x * x

    out = io.StringIO()
    results = list(progress([square.remote(i) for i in range(8)], desc="squares", file=out))
    assert sorted(results) == [i * i for i in range(8)]
    assert "squares: 100%" in out.getvalue() and "8/8" in out.getvalue()


def test_actor_pool_map_shows_a_bar_when_asked(ray, capsys: pytest.CaptureFixture[str]) -> None:
    @ray.remote
    class Doubler:
        def double(self, v: int) -> int:
            return 2 * v

    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(5), progress=True)) == [0, 2, 4, 6, 8]
    assert "5/5" in capsys.readouterr().err
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(3))) == [0, 2, 4]
    assert "3/3" not in capsys.readouterr().err  # off by default


def test_a_bar_updated_in_a_task_is_drawn_by_the_driver(shared_cluster) -> None:
    script = textwrap.dedent(f"""
        import taskmesh
        from taskmesh.experimental import tqdm_ray

        taskmesh.init(address={shared_cluster.url!r})

        @taskmesh.remote
        def work(n):
            bar = tqdm_ray.tqdm(total=n, desc="in-task")
            for _ in range(n):
                bar.update(1)
            bar.close()
            return n

        assert taskmesh.get(work.remote(10)) == 10
        tqdm_ray.safe_print("after the bar")
        taskmesh.shutdown()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "in-task: 100%" in done.stderr and "10/10" in done.stderr, done.stderr
    assert "__taskmesh_tqdm__" not in done.stdout + done.stderr
    assert "after the bar" in done.stdout
    # The bar's states are kept with the job's output, but `taskmesh logs` (and the
    # dashboard's log page) leave them out.
    from taskmesh.util.state import get_log

    assert not [line for line in get_log(address=shared_cluster.url) if "__taskmesh_tqdm__" in line]
