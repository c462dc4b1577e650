"""`taskmesh dashboard`: serve the web dashboard of a cluster from this machine (it reads
Redis alone, so any machine that reaches the cluster's Redis can serve it)."""

from __future__ import annotations

import os

import click

from taskmesh.cli.commands import _address_option, _check_bind, _connect

DEFAULT_PORT = 8265  # Ray's; taskmesh.dashboard.DEFAULT_PORT (not imported: it loads starlette)


@click.command()
@_address_option(required=False)
@click.option("--host", default="127.0.0.1", show_default=True, callback=_check_bind,
              help="Interface to listen on. Anything but loopback needs the token.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (0: a free one).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the token every request must carry (mode 0600; created with "
                   "a new token when missing). Default: none on loopback; elsewhere a new "
                   "token in the temp dir's dashboard-token.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
def dashboard(address: str | None, host: str, port: int, token_file: str | None,
              ready_fd: int | None) -> None:
    """Serve the web dashboard: nodes, jobs, tasks, actors, logs and timelines, live."""
    from taskmesh.dashboard.auth import resolve_token
    from taskmesh.dashboard.server import DashboardServer

    try:
        token, token_path = resolve_token(host, token_file)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--token-file") from None
    store = _connect(address)
    try:
        server = DashboardServer(store, host=host, port=port, token=token)
    except BaseException:
        store.close()
        raise
    click.echo(f"Dashboard: {server.url}", err=True)
    if token_path is not None:
        click.echo(f"Every request needs the token in {token_path}: open "
                   f"{server.url}/?token=TOKEN once (a cookie keeps it), or send "
                   "'Authorization: Bearer TOKEN'.", err=True)
    if ready_fd is not None:  # to the process that started this one (launch.start_dashboard)
        os.write(ready_fd, f"{server.url}\n".encode())
        os.close(ready_fd)
    try:
        server.run()
    finally:
        store.close()

