"""The dashboard's ASGI app (starlette): HTML pages rendered by jinja2 with autoescape on,
which our own script (static/dashboard.js) fills from the `/api/...` JSON endpoints and
keeps live by polling them. Endpoints are plain functions, which starlette runs in its
thread pool: the Store is a synchronous redis-py client, safe to share between threads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from taskmesh.dashboard import data
from taskmesh.dashboard.auth import Gate

_HERE = Path(__file__).parent
_JOB_ID = re.compile(r"[0-9a-f]{1,32}")
_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")


def create_app(store: Any, *, token: str | None = None) -> Any:
    """The dashboard of the cluster `store` reaches; with `token`, every request must
    carry it (see auth.py), without one only loopback host names are answered."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True)
    templates = Jinja2Templates(env=env)

    def page(name: str, nav: str, **context: Any) -> Any:
        def render(request: Request) -> Response:
            extra = {k: f(request) for k, f in context.items()}
            return templates.TemplateResponse(request, name, {"nav": nav, **extra})
        return render

    def job_id_of(request: Request) -> str:
        job_id = request.path_params["job_id"]
        if not _JOB_ID.fullmatch(job_id):
            raise HTTPException(404, "no such job")
        return job_id

    def actor_of(request: Request) -> str:
        actor = request.query_params.get("actor") or ""
        return actor if _ID.fullmatch(actor) else ""

    def api_cluster(request: Request) -> Response:
        return JSONResponse(data.cluster(store))

    def api_jobs(request: Request) -> Response:
        return JSONResponse(data.jobs(store))

    def api_job(request: Request) -> Response:
        found = data.job(store, job_id_of(request), dict(request.query_params))
        if found is None:
            return JSONResponse({"error": "no such job"}, status_code=404)
        return JSONResponse(found)

    def api_timeline(request: Request) -> Response:
        return JSONResponse(data.timeline(store, job_id_of(request)))

    def api_logs(request: Request) -> Response:
        job_id = request.query_params.get("job", "")
        if not _JOB_ID.fullmatch(job_id):
            return JSONResponse({"error": "give ?job=JOB_ID"}, status_code=400)
        after = request.query_params.get("after") or None
        if after is not None and not re.fullmatch(r"\d+-\d+", after):
            return JSONResponse({"error": "after must be a log entry id"}, status_code=400)
        return JSONResponse(data.logs(store, job_id, actor_of(request) or None, after))

    def metrics(request: Request) -> Response:
        from taskmesh.dashboard.metrics import render  # its own module, loaded when asked

        body, content_type = render(store)
        return Response(body, media_type=content_type)

    routes = [
        Route("/", page("cluster.html", "cluster")),
        Route("/jobs", page("jobs.html", "jobs")),
        Route("/jobs/{job_id}", page("job.html", "jobs", job_id=job_id_of)),
        Route("/jobs/{job_id}/timeline", page("timeline.html", "jobs", job_id=job_id_of)),
        Route("/logs", page("logs.html", "logs", job_id=lambda r: r.query_params.get("job", ""),
                            actor=actor_of)),
        Route("/api/cluster", api_cluster),
        Route("/api/jobs", api_jobs),
        Route("/api/jobs/{job_id}", api_job),
        Route("/api/jobs/{job_id}/timeline", api_timeline),
        Route("/api/logs", api_logs),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return Gate(Starlette(routes=routes), token)
