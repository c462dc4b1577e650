"""The web dashboard (cluster, jobs with their tasks, actors, placement groups and
objects, logs and timelines) and the built-in Prometheus metrics (metrics.py), read from
Redis alone, so any machine that reaches Redis can serve them.

    taskmesh dashboard [--address A] [--host H] [--port P]

`app.create_app(store, token=...)` is the ASGI app (starlette, jinja2 templates with
autoescape, our own small script and style sheet); `server.DashboardServer` serves it
with uvicorn; auth.py says who may read it. Importing this package loads none of them."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_PORT", "DashboardServer", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from taskmesh.dashboard.app import create_app

        return create_app
    if name in ("DashboardServer", "DEFAULT_PORT"):
        from taskmesh.dashboard import server

        return getattr(server, name)
    raise AttributeError(name)
