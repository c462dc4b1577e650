"""Redis addresses and connections: the URL grammar (`redis://`, `rediss://`, `unix://`,
`redis+sentinel://`), password masking, the password from the environment, TLS files,
the Sentinel-following client, and the one round trip of the hot paths (`round_trip`).

A password may travel outside the address, in $TASKMESH_REDIS_PASSWORD, so that it
appears on no command line (`ps` shows those to every user) and in no printed address;
it is used when the address carries none."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import (
    parse_qs,
    quote,
    unquote,
    urlencode,
    urlparse,
    urlsplit,
    urlunparse,
    urlunsplit,
)

import hiredis
import redis
import redis.sentinel

from taskmesh._base import config
from taskmesh.exceptions import StoreAuthenticationError

SENTINEL_SCHEME = "redis+sentinel"


_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)


_SENTINEL_PORT = 26379


def canonicalize_address(address: str) -> str:
    """`host:port`, `redis://[:password@]host:port[/db]`, `rediss://...` and
    `redis+sentinel://[:password@]host:port[,host:port...]/MASTER[/db]` -> a Redis URL.

    Raises ValueError naming the address when it is malformed.
    """
    address = address.strip()
    if not address:
        raise ValueError("Invalid address '': expected host:port or redis://host:port")
    if "://" not in address:
        address = "redis://" + address
    if address.startswith(f"{SENTINEL_SCHEME}://"):
        return parse_sentinel_address(address).url()
    parsed = urlparse(address)
    if parsed.scheme not in _SCHEMES:
        raise ValueError(f"Invalid address {mask_password(address)!r}: scheme must be one of "
                         f"{', '.join(s + '://' for s in _SCHEMES)}")
    if parsed.scheme == "unix":
        return address
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"Invalid address {mask_password(address)!r}: the port is not a number "
                         "in 0-65535") from None
    if not parsed.hostname:
        raise ValueError(f"Invalid address {mask_password(address)!r}: no host name")
    netloc = parsed.netloc if port is not None else f"{parsed.netloc}:6379"
    return urlunparse(parsed._replace(netloc=netloc))


def mask_password(url: str) -> str:
    """The URL with its password (and a sentinel password in the query) as `***`, for
    messages and logs."""
    try:
        parsed = urlsplit(url)
    except ValueError:  # unparseable, but may still carry a password
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
    masked = parsed
    userinfo, at, host = parsed.netloc.rpartition("@")
    if at and ":" in userinfo:
        masked = masked._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}")
    if "sentinel_password=" in parsed.query:
        query = [(k, "***" if k == "sentinel_password" else v)
                 for k, vs in parse_qs(parsed.query, keep_blank_values=True).items() for v in vs]
        masked = masked._replace(query=urlencode(query, safe="*"))
    return url if masked == parsed else urlunsplit(masked)


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """A parsed `redis+sentinel://` address: where the Sentinels are, the name of the
    primary they watch, and the credentials and database to use on it."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    username: str | None = None
    password: str | None = None
    db: int = 0
    sentinel_password: str | None = None

    def url(self) -> str:
        """The canonical form: every Sentinel with its port, the db spelled out."""
        userinfo = ""
        if self.password is not None or self.username:
            userinfo = quote(self.username or "", safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        query = "" if self.sentinel_password is None else "?" + urlencode(
            {"sentinel_password": self.sentinel_password})
        return f"{SENTINEL_SCHEME}://{userinfo}{hosts}/{quote(self.master_name, safe='')}/{self.db}{query}"


def parse_sentinel_address(address: str) -> SentinelAddress:
    """Parse `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/MASTER[/db]
    [?sentinel_password=...]` (Sentinel port 26379 by default). urlparse cannot: the
    netloc holds several hosts. Raises ValueError naming the (masked) address."""

    def bad(reason: str) -> ValueError:
        return ValueError(f"Invalid address {mask_password(address)!r}: {reason}")

    try:
        parsed = urlsplit(address.strip())
    except ValueError as e:
        raise bad(str(e)) from None
    if parsed.scheme != SENTINEL_SCHEME:
        raise bad(f"expected {SENTINEL_SCHEME}://")
    userinfo, at, hosts = parsed.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    if not hosts:
        raise bad("no Sentinel host (expected host:port[,host:port...])")
    sentinels = tuple(_parse_endpoint(h, bad) for h in hosts.split(","))
    path = [unquote(part) for part in parsed.path.split("/")[1:]]
    if not path or not path[0] or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise bad("expected /MASTER_NAME or /MASTER_NAME/DB after the Sentinel hosts")
    query = parse_qs(parsed.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise bad(f"unknown option(s) {', '.join(unknown)}; only sentinel_password is accepted")
    sentinel_password = query["sentinel_password"][-1] if "sentinel_password" in query else None
    return SentinelAddress(sentinels, path[0], username, password,
                           int(path[1]) if len(path) == 2 else 0, sentinel_password)


def _parse_endpoint(text: str, bad: Callable[[str], ValueError]) -> tuple[str, int]:
    """`host[:port]` or `[v6-address][:port]` -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise bad(f"Sentinel {text!r} has no host name")
    if not port_text:
        return host, _SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad(f"Sentinel {text!r}: the port is not a number in 1-65535")
    return host, int(port_text)


def url_password(url: str) -> str | None:
    """The password an address carries, if any."""
    if url.startswith(f"{SENTINEL_SCHEME}://"):
        return parse_sentinel_address(url).password
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password is not None else None


def env_password(url: str) -> str | None:
    """$TASKMESH_REDIS_PASSWORD when `url` carries no password of its own."""
    if url_password(url) is not None:
        return None
    return config.REDIS_PASSWORD.get()


def without_password(url: str) -> str:
    """The address without its password (a user name stays), to print or hand on while
    the password travels apart."""
    if url.startswith(f"{SENTINEL_SCHEME}://"):
        return dataclasses.replace(parse_sentinel_address(url), password=None).url()
    parsed = urlsplit(url)
    userinfo, at, host = parsed.netloc.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parsed._replace(netloc=f"{user}@{host}" if user else host))


def with_password(url: str, password: str | None) -> str:
    if not password:
        return url
    parsed = urlparse(url)
    host = parsed.netloc.rpartition("@")[2]
    return urlunparse(parsed._replace(netloc=f"{parsed.username or ''}:{quote(password, safe='')}@{host}"))


def failure_message(url: str, error: BaseException) -> str:
    """One line saying why the Redis at `url` cannot be used (`error`: what reaching it
    raised) and what to do about it."""
    reason = " ".join(str(error.__cause__ or error).split()).rstrip(".")
    where = mask_password(url)
    if isinstance(error, (StoreAuthenticationError, redis.AuthenticationError)):
        return (f"The Redis at {where} refused the credentials ({reason}): give the cluster's "
                f"password in ${config.REDIS_PASSWORD.name} or --redis-password-file (the file "
                "'taskmesh start --head' wrote), or as redis://:PASSWORD@host:port.")
    return (f"Cannot reach the Redis at {where} ({reason}): check the address and that the "
            "cluster runs ('taskmesh start --head' starts one).")


# ---- TLS ------------------------------------------------------------------------------

ENV_TLS_CA_FILE = config.TLS_CA_FILE.name


ENV_TLS_CERT = config.TLS_CERT.name


ENV_TLS_KEY = config.TLS_KEY.name


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for `rediss://`: the CA that signed the server's certificate, and this
    client's (or the embedded server's) certificate and key. Any may be None."""

    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TlsFiles:
        """The files the TASKMESH_TLS_* variables of `env` (default: this process's) name."""
        return cls(config.TLS_CA_FILE.get(env), config.TLS_CERT.get(env), config.TLS_KEY.get(env))

    def __bool__(self) -> bool:
        return any((self.ca_file, self.cert, self.key))

    def env(self) -> dict[str, str]:
        """The environment variables that hand these files to child processes."""
        pairs = ((ENV_TLS_CA_FILE, self.ca_file), (ENV_TLS_CERT, self.cert), (ENV_TLS_KEY, self.key))
        return {k: v for k, v in pairs if v}

    def connection_kwargs(self) -> dict[str, Any]:
        """redis-py keyword arguments of an SSL connection."""
        out: dict[str, Any] = {}
        if self.ca_file:
            out["ssl_ca_certs"] = self.ca_file
        if self.cert:
            out["ssl_certfile"] = self.cert
        if self.key:
            out["ssl_keyfile"] = self.key
        return out


def tls_connection_kwargs(url: str, tls: TlsFiles | None = None) -> dict[str, Any]:
    """The TLS arguments of a client of `url`: the given files, else those named by the
    TASKMESH_TLS_* variables. Files with an address that is not `rediss://` raise
    ValueError: the connection would be plaintext although TLS was asked for."""
    files = tls if tls else TlsFiles.from_env()
    if not url.startswith("rediss://"):
        if files:
            raise ValueError(tls_scheme_error(url))
        return {}
    return files.connection_kwargs()


def tls_scheme_error(url: str) -> str:
    return (f"TLS files are given (--tls-ca-file/--tls-cert/--tls-key, tls_ca_file/tls_cert/"
            f"tls_key, or ${ENV_TLS_CA_FILE}/${ENV_TLS_CERT}/${ENV_TLS_KEY}) but the address "
            f"{mask_password(url)} is not rediss://, so the connection would not use TLS. "
            "Use a rediss:// address, or give no TLS files.")


def check_tls_files(tls: TlsFiles) -> None:
    """Raise ValueError naming the option whose file is missing or unreadable, or a
    certificate given without its key."""
    for option, path in (("tls_ca_file", tls.ca_file), ("tls_cert", tls.cert), ("tls_key", tls.key)):
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"{option}: cannot read {path!r}")
    if bool(tls.cert) != bool(tls.key):
        raise ValueError("tls_cert and tls_key must be given together")


# ---- Sentinel -------------------------------------------------------------------------

SENTINEL_TIMEOUT_S = 0.5


class _FollowingConnection(redis.sentinel.SentinelManagedConnection):
    """A Sentinel-managed connection that also asks the Sentinels where the primary is
    when it reconnects on its own. redis-py reconnects a dropped connection inside
    `send_packed_command` straight to its last host, so a connection held for good (a
    `dedicated()` client) would keep dialing a dead primary; the pool's own connect path
    asks the Sentinels, and this routes the reconnect through it."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)


def _sentinel_client(
    url: str, connection_kwargs: dict[str, Any]
) -> tuple[redis.sentinel.Sentinel, redis.Redis]:
    """A client of the primary the Sentinels of a `redis+sentinel://` address name.
    Its pool asks them again whenever it opens a connection after losing one (and drops
    a connection that hits a demoted primary), so the client follows a failover. The
    Sentinels get a short timeout of their own: one that is down is skipped quickly."""
    address = parse_sentinel_address(url)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT_S,
                                       "socket_connect_timeout": SENTINEL_TIMEOUT_S}
    if address.sentinel_password is not None:
        sentinel_kwargs["password"] = address.sentinel_password
    sentinel = redis.sentinel.Sentinel(list(address.sentinels), sentinel_kwargs=sentinel_kwargs)
    kwargs = dict(connection_kwargs)
    password = kwargs.pop("password", None) if address.password is None else address.password
    client = sentinel.master_for(
        address.master_name, username=address.username, password=password,
        db=address.db, health_check_interval=30, socket_keepalive=True,
        connection_class=_FollowingConnection, **kwargs)
    return sentinel, client


# ---- one round trip on the hot paths -----------------------------------------------------

def round_trip(client: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send `commands` (each the arguments of one command: str, bytes, int or float) in
    one write on one of the client's pooled connections and read their replies, in
    order, as Redis sends them (RESP2, nothing decoded or reshaped); a reply that is an
    error comes back as its exception (NoScriptError, ...), as a pipeline's with
    raise_on_error=False.

    What a redis-py pipeline does besides costs ~100 Python calls per round trip and a
    call per argument (its encoder); hiredis packs the whole command here. No retry: a
    failed connection is dropped and ConnectionError / TimeoutError raised, for the
    caller's retry, which knows what is safe to send again (redis-py's own would send a
    lease again whose reply was lost)."""
    packed = []
    for args in commands:
        name = args[0]
        if isinstance(name, str) and " " in name:  # "SCRIPT LOAD": two words, two arguments
            args = (*name.split(), *args[1:])
        packed.append(hiredis.pack_command(tuple(args)))
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([b"".join(packed)])  # a list of chunks, each one write
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as e:  # an error reply, read whole: the rest follow
                replies.append(e)
        return replies
    except BaseException:
        conn.disconnect()  # the replies not read would otherwise answer the next caller
        raise
    finally:
        pool.release(conn)
