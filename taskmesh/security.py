"""Who may talk to the cluster: Redis credentials and TLS, the refusal of an open Redis,
the ACL users of each role, and the secret that object-transfer servers challenge for.

Redis is the trust boundary: whoever can write taskmesh's keys can queue a task, that is
run code on every node. So a Redis that others can reach must ask for a password, and
each role gets a Redis user that can do its job and nothing more (see `acl_rules`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import stat
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import redis

from taskmesh._base import config, versions
from taskmesh.store.connection import (  # noqa: F401  (re-exported: the TLS options' home)
    ENV_TLS_CA_FILE,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    TlsFiles,
    check_tls_files,
    mask_password,
    tls_connection_kwargs,
)

if TYPE_CHECKING:
    from taskmesh.store.client import Store

log = logging.getLogger("taskmesh.security")

ENV_ALLOW_INSECURE = config.ALLOW_INSECURE.name
ENV_REDIS_PASSWORD = config.REDIS_PASSWORD.name
ROLES = ("driver", "agent", "readonly")
SECRET_BYTES = 32
# The shortest password taskmesh sets on a Redis (requirepass, ACL users): a generated
# one has 43 characters.
MIN_PASSWORD_CHARS = 16
# How often the running failure monitor re-reads the server's maxmemory-policy.
EVICTION_CHECK_INTERVAL_S = 60.0


class InsecureRedisError(ValueError):
    """A Redis that anyone who reaches it could command, used without --allow-insecure."""


class ProtectedModeError(ValueError):
    """A Redis in protected mode refused this client: it came from another machine
    without a password."""


# ---- passwords and open servers -------------------------------------------------------

def generate_password() -> str:
    """A password strong enough for a Redis reachable from the network (256 bits)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def check_password(password: str, *, what: str = "the password") -> None:
    """Raise ValueError (never showing the password) unless it may be set on a Redis:
    at least MIN_PASSWORD_CHARS of printable ASCII without spaces, quotes or backslashes
    (it goes into a config file line and into URLs)."""
    if not password or not all(33 <= ord(c) < 127 and c not in "\"'\\" for c in password):
        raise ValueError(f"{what} must be non-empty printable ASCII without spaces, quotes "
                         "or backslashes")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"{what} is too weak: {len(password)} characters where at least "
                         f"{MIN_PASSWORD_CHARS} are needed (leave it out to get a generated one)")


def read_password_file(path: str | Path) -> tuple[str, bool]:
    """The password in a file (its one line, without the newline), and whether others
    than its owner may read the file. Raises ValueError naming the file."""
    try:
        text = Path(path).read_text()
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the password file {str(path)!r}: {e}") from None
    lines = text.splitlines()
    if len(lines) != 1 or not lines[0]:
        raise ValueError(f"the password file {str(path)!r} must hold the password on one "
                         "line and nothing else")
    return lines[0], bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def write_password_file(path: Path, password: str) -> None:
    """Write `password` to a new file only its owner can read (created with that mode,
    so no other user can open it in between; an old file there is replaced)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address (so only processes
    of this machine can connect); unresolvable names count as not loopback."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback
                               for i in infos)


def this_machine_ip() -> str:
    """The address other machines most likely reach this one at: the source address of
    the default route (a UDP connect sends nothing), else the host name's address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # TEST-NET-1: routed like any remote address
            return str(s.getsockname()[0])
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def allow_insecure_default() -> bool:
    return config.ALLOW_INSECURE.get()


_warned: set[str] = set()


def check_not_open(client: redis.Redis, url: str, *, allow_insecure: bool,
                   primary: tuple[str, int] | None = None, prefix: str = "tm") -> None:
    """Refuse a Redis on another machine that runs commands without authentication:
    anyone who reaches it controls the cluster. `primary` is the (host, port) a Sentinel
    named, for `redis+sentinel://` addresses. With `allow_insecure`, warn once instead.

    "Open" is judged by what an unauthenticated client may do (see `_unauthenticated_reach`),
    not by whether it may touch some key: a default user confined to the cluster's own
    prefix (`~tm:*`) passes a probe of any other key and still owns the cluster."""
    if url.startswith("unix://"):
        return
    if primary is not None:
        host, port = primary
        probe_kwargs: dict[str, Any] = {"host": host, "port": port}
        connection_class: type = redis.Connection
    else:
        host = urlsplit(url).hostname or ""
        pool = client.connection_pool
        probe_kwargs = {k: v for k, v in pool.connection_kwargs.items()
                        if k not in ("username", "password", "credential_provider")}
        connection_class = pool.connection_class
    if is_loopback(host):
        return
    probe = redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=connection_class, **{**probe_kwargs, "socket_timeout": 5.0,
                                              "socket_connect_timeout": 5.0}))
    try:
        reach = _unauthenticated_reach(probe, prefix)
    finally:
        probe.close()
        probe.connection_pool.disconnect()
    if reach is None:
        return
    where = mask_password(url)
    if not allow_insecure:
        raise InsecureRedisError(
            f"Refusing the Redis at {where}: it is on another machine ({host}) and runs "
            f"commands without a password (a client without credentials {reach}), so "
            "anyone who can reach it controls this cluster and runs code on its nodes. "
            "Give it a password (requirepass, or an ACL user: 'taskmesh acl setup') and "
            "use redis://USER@host:port with the password in --redis-password-file or "
            f"${ENV_REDIS_PASSWORD}, or pass "
            f"--allow-insecure (allow_insecure=True, {ENV_ALLOW_INSECURE}=1) to accept the risk.")
    if where not in _warned:
        _warned.add(where)
        log.warning("SECURITY WARNING: the Redis at %s accepts commands without a password "
                    "from the network (a client without credentials %s); anyone who can "
                    "reach it controls this cluster (--allow-insecure was given).", where, reach)


def _unauthenticated_reach(probe: redis.Redis, prefix: str) -> str | None:
    """What a client without credentials may do on the server, as a phrase; None when
    it may do none of it. Each probe changes nothing: it reads or deletes a key that
    does not exist, appends to a stream only if it exists (NOMKSTREAM: it does not), or
    reads one setting. NOPERM on one probe moves on to the next; NOAUTH, WRONGPASS or
    protected mode's DENIED end the probing (nothing runs without a password)."""
    absent = f"{prefix}:_probe:{secrets.token_hex(8)}"
    cluster = f"the cluster's keys ({prefix}:*)"
    probes = (
        (("EXISTS", "taskmesh-probe"), "may read keys"),
        (("EXISTS", absent), f"may read {cluster}"),
        (("DEL", absent), f"may write {cluster}"),
        (("XADD", absent, "NOMKSTREAM", "*", "probe", "1"), f"may queue to {cluster}"),
        (("CONFIG", "GET", "maxmemory-policy"), "may run CONFIG"),
    )
    for command, reach in probes:
        try:
            probe.execute_command(*command)
        except redis.exceptions.NoPermissionError:
            continue
        except (redis.ResponseError, redis.AuthenticationError):
            return None
        return reach
    return None


# ---- the object-transfer secret -------------------------------------------------------

_secrets: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()


def transfer_secret(store: Store) -> bytes:
    """The cluster secret that object-transfer servers challenge for: made by the first
    process allowed to (an agent), read by the others (drivers, workers). One round trip,
    then cached. The readonly role cannot read its key."""
    found = _secrets.get(store)
    if found is not None:
        return found
    key = store.keys.transfer_secret()
    pipe = store.redis.pipeline(transaction=False)
    pipe.set(key, secrets.token_hex(SECRET_BYTES), nx=True)
    pipe.get(key)
    _, value = pipe.execute(raise_on_error=False)
    if isinstance(value, Exception):
        raise value
    if not value:
        raise RuntimeError("The cluster has no object-transfer secret yet: it is made by "
                           "the first node agent, so start one first.")
    _secrets[store] = bytes.fromhex(value.decode())
    return _secrets[store]


# ---- ACL users ------------------------------------------------------------------------

def acl_rules(role: str, prefix: str, db: int = 0) -> list[str]:
    """The ACL SETUSER rules of a role (without its password). Key patterns stay under
    the cluster prefix; `prefix:_...` keys (the transfer secret) are hidden from readonly.
    Every role is confined to database `db` (SELECT of any other, MOVE and COPY are
    denied), so clusters that share a Redis are apart by prefix and by database.

    driver:   submit tasks and actor calls, read results, hold and release its refs, read
              (not change) nodes and the failure monitor; no leasing from queues.
    agent:    everything taskmesh does under the prefix (its workers run users' tasks,
              which submit in turn), but no server administration (ACL, CONFIG, FLUSH*,
              SHUTDOWN, DEBUG, MODULE...), and nothing that acts on the whole server's
              scripts or functions: SCRIPT LOAD and EVALSHA stay, SCRIPT FLUSH/KILL/DEBUG
              and FUNCTION/FCALL go.
    readonly: read commands on the prefix for status/list/redis-cli; no writes, no
              pub/sub, not the transfer secret."""
    p = prefix
    base = ["reset", "on", "resetchannels", "resetkeys", "-@all"]
    # SELECT of the cluster's own database only (a first-argument rule): redis-py sends
    # it on connect for a /DB address.
    confined = ["-select", f"+select|{db}", "-move", "-copy"]
    runtime = ["+@all", "-@admin", "-@dangerous", "+info", "+role", "+client|id",
               "+client|unblock", "-script|flush", "-script|kill", "-script|debug",
               "-function", "-fcall", "-fcall_ro", *confined, f"&{p}:*"]
    if role == "agent":
        return base + runtime + [f"~{p}:*"]
    if role == "driver":
        # Every key family a driver writes (a new one needs its pattern here); the rest
        # (node:*, nodes:*, monitor, deadletter, node_actors:*, node_procs:*, _secret:*)
        # it may only read.
        writable = ("fn:* shapes q:* pinned pg:* pgs pgs:* named_pg:* {*}:* job:* jobs jobs:ended actor:* "
                    "actors named:* drivers kv:* events task_counts logs:* metrics metric:* pkg:* "
                    "node_reserved:* submission:* submissions").split()
        return (base + runtime + ["-xreadgroup", "-xclaim", "-xautoclaim", f"%R~{p}:*"]
                + [f"%RW~{p}:{w}" for w in writable])
    if role == "readonly":
        return base + ["+@read", "+@connection", "-@dangerous", "+info", "+keys", *confined,
                       f"%R~{p}:[^_]*"]
    raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")


def setup_acl(client: redis.Redis, prefix: str,
              passwords: Mapping[str, str | None] | None = None,
              *, user_prefix: str = "", db: int | None = None) -> dict[str, str]:
    """Create or replace the users of every role (named `user_prefix + role`), each with
    the given password or a generated one, confined to database `db` (default: the one
    `client` uses); returns user name -> password."""
    if db is None:
        db = int(client.connection_pool.connection_kwargs.get("db") or 0)
    out = {}
    for role in ROLES:
        password = (passwords or {}).get(role) or generate_password()
        check_password(password, what=f"the {role} password")
        user = f"{user_prefix}{role}"
        client.execute_command("ACL", "SETUSER", user, *acl_rules(role, prefix, db), f">{password}")
        out[user] = password
    return out


def user_url(url: str, user: str, password: str) -> str:
    """`url` with USER:PASSWORD as its credentials."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}").geturl()


# ---- persistence (for `taskmesh status`) ---------------------------------------------

def persistence(client: redis.Redis) -> dict[str, str]:
    """How the server keeps data across restarts: AOF on/off (and fsync policy) and the
    RDB snapshot schedule, from CONFIG where allowed, else from INFO persistence."""
    out: dict[str, str] = {}
    try:
        conf = client.config_get("appendonly")
        conf.update(client.config_get("appendfsync"))
        conf.update(client.config_get("save"))
        out["aof"] = (f"on (appendfsync {conf.get('appendfsync')})"
                      if conf.get("appendonly") == "yes" else "off")
        out["rdb"] = f"save {conf['save']}" if conf.get("save") else "off"
        return out
    except redis.ResponseError:  # CONFIG forbidden (ACL user, managed service)
        pass
    try:
        info = client.info("persistence")
    except redis.ResponseError:
        return {"aof": "unknown", "rdb": "unknown"}
    out["aof"] = "on" if int(info.get("aof_enabled", 0)) else "off"
    out["rdb"] = "schedule unknown (CONFIG not allowed)"
    return out


def check_reachable(store: Store) -> None:
    """PING the server once: StoreUnavailableError when it cannot be reached (its
    subclass StoreAuthenticationError when it refuses the credentials), ProtectedModeError
    (which says what to do) when protected mode refuses this client."""
    try:
        store.ping()
        denied = False
    except redis.ResponseError as e:  # a NOPERM on PING itself is for later probes
        denied = str(e).startswith("DENIED")
    if denied:
        raise ProtectedModeError(
            f"The Redis at {mask_password(store.url)} refused this client: it is in protected "
            "mode and the address carries no password. Give the password "
            f"(${ENV_REDIS_PASSWORD}, --redis-password-file, or redis://:PASSWORD@host:port); "
            "for a server without one, bind it to loopback or turn protected mode off "
            "knowing that anyone who reaches it then controls the cluster.")


def check_server(store: Store, *, allow_insecure: bool | None = None) -> None:
    """What a driver or node agent checks before it joins (see check_reachable for a
    server that cannot be used at all). Refuse a Redis that may evict keys: an evicted
    queue entry, result or actor record is lost work (servers that allow neither INFO
    nor CONFIG are trusted). Refuse one on another machine that runs commands without a
    password unless `allow_insecure` (default: $TASKMESH_ALLOW_INSECURE). And refuse a
    cluster whose Python or taskmesh version is not this process's (VersionMismatchError;
    a fresh cluster records this process's, see _base/versions.py)."""
    if allow_insecure is None:
        allow_insecure = allow_insecure_default()
    check_reachable(store)
    check_not_open(store.redis, store.url, allow_insecure=allow_insecure, primary=store.primary(),
                   prefix=store.keys.prefix)
    policy = store.eviction_policy()
    if evicts(policy):
        raise ValueError(eviction_message(store, policy))
    versions.check(store.cluster_versions(versions.this_process()), mask_password(store.url))


def evicts(policy: str | None) -> bool:
    """Whether a maxmemory-policy may evict taskmesh's keys (None: unknown, trusted)."""
    return policy not in (None, "noeviction")


def eviction_message(store: Store, policy: str | None) -> str:
    return (f"The Redis at {mask_password(store.url)} has maxmemory-policy {policy!r}: it "
            "may evict taskmesh's keys and lose tasks and objects. Set 'maxmemory-policy "
            "noeviction' (CONFIG SET maxmemory-policy noeviction).")


class EvictionWatch:
    """The maxmemory-policy is checked when a process joins, but an administrator may
    change it on a running server; the failure monitor calls `check` every tick and this
    re-reads the policy every `interval_s`, logging an ERROR when it turns to one that
    evicts (once per change, not every time) and a line when it is back."""

    def __init__(self, interval_s: float = EVICTION_CHECK_INTERVAL_S):
        self.interval_s = interval_s
        self.policy: str | None = None
        self._next = 0.0

    def check(self, store: Store) -> str | None:
        """The policy last read (re-read when `interval_s` has passed)."""
        now = time.monotonic()
        if now < self._next:
            return self.policy
        self._next = now + self.interval_s
        policy = store.eviction_policy()
        if policy != self.policy:
            if evicts(policy):
                log.error("%s Until then, any key may be lost at any time.",
                          eviction_message(store, policy))
            elif evicts(self.policy):
                log.warning("The Redis at %s is back to maxmemory-policy %r.",
                            mask_password(store.url), policy)
        self.policy = policy
        return policy
