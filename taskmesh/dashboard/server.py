"""Serving the dashboard with uvicorn on a socket bound here first, so that a port in use
is reported at once, naming the port and its holder (as `taskmesh metrics --serve` does),
and so that the URL is known (port 0 included) before the server runs."""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any

from taskmesh.dashboard.app import create_app
from taskmesh.workers import launch

DEFAULT_PORT = 8265


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); launch.PortInUseError when the port is held."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            holder = launch.port_holder(host, port) or "another process"
            raise launch.dashboard_port_in_use(host, port, holder) from None
        raise
    sock.set_inheritable(False)
    return sock


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class DashboardServer:
    """The dashboard of `store`'s cluster, bound at construction; `run()` serves until
    `stop()` (or SIGINT/SIGTERM when run in the main thread)."""

    def __init__(self, store: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 token: str | None = None) -> None:
        import uvicorn

        self.sock = bind(host, port)
        self.port = int(self.sock.getsockname()[1])
        self.url = url_of(host, self.port)
        config = uvicorn.Config(create_app(store, token=token), lifespan="off",
                                log_level="warning", access_log=False, server_header=False)
        self._server = uvicorn.Server(config)

    def run(self) -> None:
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start_thread(self) -> threading.Thread:
        """Serve from a daemon thread (tests, an embedding program)."""
        thread = threading.Thread(target=self.run, name="taskmesh-dashboard", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._server.should_exit = True
