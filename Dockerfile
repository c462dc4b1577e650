# taskmesh node image: Python + the taskmesh package. No ENTRYPOINT/CMD of its own;
# docker-compose.yml gives each service its command (e.g. `taskmesh worker`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build needs.
COPY pyproject.toml README.m[d] /src/
COPY taskmesh /src/taskmesh
RUN pip install /src && rm -rf /src

# Tasks run arbitrary user code: do not run them as root.
RUN useradd --create-home --uid 1000 taskmesh
USER taskmesh
WORKDIR /home/taskmesh
