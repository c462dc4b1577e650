"""Who may read the dashboard.

Bound to loopback, only this machine's processes reach it, and no token is asked for;
requests must then name a loopback host (so that a web page of another site cannot read
it through a DNS name rebound to 127.0.0.1). Bound to any other address, every request
must carry the dashboard's token: a first visit with `?token=...` (answered with a
redirect that sets it as an HttpOnly, SameSite=Strict cookie and drops it from the
address), the cookie, or an `Authorization: Bearer` header. The token is generated as the
Redis password is (`security.generate_password`) and kept in a file only its owner can
read, never on a command line; tokens are compared in constant time."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from taskmesh import security
from taskmesh._base import config

COOKIE = "taskmesh_dashboard_token"
TOKEN_FILE = "dashboard-token"  # under the temp root, when no --token-file is given

# Sent with every response: scripts and styles of our own only, no framing, no referrer.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                                 b"frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def resolve_token(host: str, token_file: str | Path | None) -> tuple[str | None, Path | None]:
    """(token, the file holding it) for a dashboard bound to `host`. A given file that
    exists holds the token (ValueError when it is unreadable, weak or readable by other
    users); one that does not exist yet gets a new token. Without a file, a loopback
    bind needs none, any other gets a new one in the temp root's `dashboard-token`."""
    if token_file is not None and Path(token_file).exists():
        token, loose = security.read_password_file(token_file)
        if loose:
            raise ValueError(f"the token file {str(token_file)!r} can be read by other users "
                             f"than its owner: 'chmod 600 {token_file}'")
        security.check_password(token, what="the dashboard token")
        return token, Path(token_file)
    if token_file is None and security.is_loopback(host):
        return None, None
    path = Path(token_file) if token_file is not None else config.temp_root() / TOKEN_FILE
    token = security.generate_password()
    security.write_password_file(path, token)
    return token, path


def _local_host(host_header: str) -> bool:
    """Whether a Host header names this machine's loopback (any port)."""
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Gate:
    """ASGI middleware: the token check (when there is a token) or the loopback Host
    check (when there is none), and the security headers on every response."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        async def send_secured(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        if self.token is None:
            if _local_host(headers.get("host", "")):
                await self.app(scope, receive, send_secured)
            else:
                await _plain(send_secured, 403, "This dashboard answers only to localhost / 127.0.0.1.")
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = next((v for k, v in query if k == "token"), None)
        if given is not None:
            if self._valid(given):
                rest = urlencode([(k, v) for k, v in query if k != "token"]).encode()
                path = scope.get("raw_path") or scope.get("path", "/").encode()
                await _redirect(send_secured, path + (b"?" + rest if rest else b""), given)
            else:
                await _plain(send_secured, 401, "Wrong token.")
            return
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if self._valid(bearer) or self._valid(_cookie(headers.get("cookie", ""), COOKIE)):
            await self.app(scope, receive, send_secured)
            return
        await _plain(send_secured, 401, "This dashboard needs its token: open it once as "
                                        "http://HOST:PORT/?token=TOKEN (the token is in the file "
                                        "its start printed), or send 'Authorization: Bearer TOKEN'.")

    def _valid(self, given: str | None) -> bool:
        assert self.token is not None
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


async def _plain(send: Any, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Any, location: bytes, token: str) -> None:
    cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location),
                            (b"set-cookie", cookie.encode("latin-1")),
                            (b"cache-control", b"no-store"), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
