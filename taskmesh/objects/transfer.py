"""Moving a sealed object from the node that holds it to the node that needs it, over TCP.

Each node runs a `TransferServer` over its `ShmStore`; a process that needs an object held
only elsewhere calls `fetch`, which streams the bytes straight into this node's shared
memory. The object's bytes are opaque here. The protocol (integers big-endian):

    hello     the server speaks first: b"TMH\\x01" | 16 random bytes (the challenge)
    auth      the client answers HMAC-SHA256(cluster secret, b"taskmesh-transfer\\x00" +
              challenge), 32 bytes; the server answers u8 1, or closes the connection
              without reading anything more when the answer is wrong
    request   b"TMX\\x01" (magic, last byte the version) | u8 n (1..64) | n bytes: the id, ASCII hex
    header    u8 status (1 found, 0 missing) | u64 size (0 when missing)
    go        after "found", the client sends u8 1 (send it) or 0 (skip: this node
              already has a writer for it), so a copy is never sent twice to one node
    payload   size bytes in chunks of CHUNK_BYTES, then u32 zlib.crc32 of the payload

A connection may carry several requests in turn. The server drops a connection whose
request is malformed or incomplete after `request_timeout_s`, logging one line.

Why the handshake: any process that can reach a node's port could otherwise read every
object of that node. The secret is kept in Redis (see `security.transfer_secret`), where
the agent, driver and worker credentials can read it and the readonly role cannot; it
never crosses the wire, and a fresh challenge per connection makes a recorded answer
useless on the next one. Until a client has answered, the server reads exactly the 32
bytes of the answer and holds the connection for at most `AUTH_TIMEOUT_S` in all (not
per byte: a client trickling its answer is cut off as soon as one that is silent).

Why the limits before authentication: anyone who reaches the port can open connections
without the secret. Connections still in the handshake are capped per peer address
(MAX_PENDING_PER_PEER) and in all (MAX_PENDING); past a cap the oldest of them is cut,
since a member of the cluster answers within a round trip and an idle one is the likely
abuser. They take none of the MAX_CONNECTIONS slots, which only authenticated clients
hold, so hundreds of idle sockets do not make a real transfer wait. And their failures
are logged at a bounded rate (see `_FailureLog`), so a flood of junk handshakes cannot
grow the log without limit.

Why this shape: the sender sends slices of its read-only mapping and the receiver
`recv_into`s slices of its destination segment, so neither copies the object in user
space and memory stays bounded; the crc is computed a chunk at a time while the chunk is
hot in cache. Why a checksum on top of TCP's: TCP's 16-bit sum lets rare corruption
through on long paths, and a bad copy sealed here would be read by every process of this
node and served on to other nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import mmap
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Sequence

from taskmesh.exceptions import (
    ObjectFetchTimedOutError,
    ObjectLostError,
    ObjectStoreFullError,
    RaySystemError,
)
from taskmesh.objects.capacity import free_bytes
from taskmesh.objects.shm import Segment, ShmStore

log = logging.getLogger("taskmesh.transfer")

MAGIC = b"TMX\x01"
HELLO = b"TMH\x01"
CHALLENGE_BYTES = 16
AUTH_BYTES = 32
AUTH_OK = b"\x01"
# An unauthenticated connection holds one of MAX_CONNECTIONS slots at most this long.
AUTH_TIMEOUT_S = 5.0
MAX_ID_BYTES = 64
CHUNK_BYTES = 1024 * 1024
FOUND, MISSING = 1, 0
GO, SKIP = b"\x01", b"\x00"
# Authenticated connections served at once; past it, clients wait for a slot.
MAX_CONNECTIONS = 64
# Connections still in the handshake (see the module docstring).
MAX_PENDING_PER_PEER = 32
MAX_PENDING = 256
# Failed handshakes: one line per peer per window, at most this many peers' lines per
# window; the rest are counted and the count logged.
FAILURE_LOG_WINDOW_S = 60.0
FAILURE_LOG_PEERS = 20
# A refused or dropped SYN should move on to the next holder well before a stalled
# transfer would, so connecting waits at most this long.
CONNECT_TIMEOUT_S = 10.0

_HEADER = struct.Struct("!BQ")
_CRC = struct.Struct("!I")
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _BadRequest(Exception):
    """A client sent something that is not a request of this protocol."""


class _HolderFailed(Exception):
    """A holder could not supply a good copy; the next one is tried."""


def auth_answer(secret: bytes, challenge: bytes) -> bytes:
    """The answer that proves knowledge of the cluster secret for one challenge."""
    return hmac.new(secret, b"taskmesh-transfer\x00" + challenge, hashlib.sha256).digest()


class _FailureLog:
    """Failed handshakes, logged at a bounded rate: anyone who reaches the port can send
    junk, and a line per connection would let them grow the log without limit. In each
    window the first failure of a peer address is logged (for at most `peers` addresses);
    the others are counted, and the count is logged with the first failure after the
    window (or when the server stops)."""

    def __init__(self, window_s: float, peers: int):
        self._window_s = window_s
        self._max_peers = peers
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._logged: set[str] = set()
        self._counted = 0

    def record(self, peer: str, reason: str, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        with self._lock:
            summary = self._roll(now) if now - self._start >= self._window_s else None
            first = peer not in self._logged and len(self._logged) < self._max_peers
            if first:
                self._logged.add(peer)
            else:
                self._counted += 1
        if summary:
            log.warning("%s", summary)
        if first:
            log.log(level, "transfer: dropped connection from %s before it authenticated: %s "
                    "(further ones from it in the next %.0fs are only counted)",
                    peer, reason, self._window_s)

    def flush(self) -> None:
        with self._lock:
            summary = self._roll(time.monotonic())
        if summary:
            log.warning("%s", summary)

    def _roll(self, now: float) -> str | None:
        """Start a new window; the count of the one that ended, as a line (None if 0)."""
        counted, elapsed = self._counted, now - self._start
        self._start, self._counted = now, 0
        self._logged.clear()
        if not counted:
            return None
        return (f"transfer: {counted} more connection(s) dropped before authenticating in "
                f"the last {elapsed:.0f}s (not logged one by one)")


class TransferServer:
    """Serves the sealed objects of one node's ShmStore over TCP."""

    def __init__(self, shm: ShmStore, host: str = "0.0.0.0", port: int = 0,
                 *, secret: bytes, request_timeout_s: float = 10.0,
                 auth_timeout_s: float = AUTH_TIMEOUT_S):
        if not secret:
            raise ValueError("the transfer server needs the cluster secret")
        self._shm = shm
        self._secret = secret
        self._request_timeout_s = request_timeout_s
        self._auth_timeout_s = min(request_timeout_s, auth_timeout_s)
        self._listener = socket.create_server((host, port), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self.served = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._conns: set[socket.socket] = set()
        # Connections in the handshake, oldest first, with their peer address; and those
        # cut to make room (their threads see EOF and log why).
        self._pending: dict[socket.socket, str] = {}
        self._pending_per_peer: dict[str, int] = {}
        self._cut: set[socket.socket] = set()
        self._failures = _FailureLog(FAILURE_LOG_WINDOW_S, FAILURE_LOG_PEERS)
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        """Accept connections in a daemon thread, each served by a thread of its own."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"taskmesh-transfer-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and cut open connections (their transfers fail over to other holders)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            conns = list(self._conns)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
        self._listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._failures.flush()

    def _accept_loop(self) -> None:
        """Accept without waiting for a slot (only authenticated clients take one), so
        a client never queues behind connections that do not authenticate."""
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return  # stop() closed the listener
            with self._lock:
                if self._stopped:
                    conn.close()
                    return
                self._conns.add(conn)
                cut = self._admit(conn, str(peer[0]))
            if cut is not None:
                with contextlib.suppress(OSError):
                    cut.shutdown(socket.SHUT_RDWR)  # its thread wakes with EOF
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                             name=f"taskmesh-transfer-conn-{peer[1]}").start()

    def _admit(self, conn: socket.socket, host: str) -> socket.socket | None:
        """Count a new connection as in the handshake; the one cut to stay within the
        caps (the oldest of its peer's, else the oldest of all), if any. Under the lock."""
        self._pending[conn] = host
        self._pending_per_peer[host] = self._pending_per_peer.get(host, 0) + 1
        cut = None
        if self._pending_per_peer[host] > MAX_PENDING_PER_PEER:
            cut = next(c for c, h in self._pending.items() if h == host)
        elif len(self._pending) > MAX_PENDING:
            cut = next(iter(self._pending))
        if cut is not None:
            self._unpend(cut)
            self._cut.add(cut)
        return cut

    def _unpend(self, conn: socket.socket) -> bool:
        """Stop counting `conn` as in the handshake; False when it was not. Under the lock."""
        host = self._pending.pop(conn, None)
        if host is None:
            return False
        left = self._pending_per_peer[host] - 1
        if left:
            self._pending_per_peer[host] = left
        else:
            del self._pending_per_peer[host]
        return True

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        host = str(peer[0])
        authenticated = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._authenticate(conn)
            authenticated = True
            with self._slots:
                conn.settimeout(self._request_timeout_s)
                while self._serve_request(conn):
                    pass
        except (_BadRequest, EOFError, TimeoutError, OSError) as e:
            if authenticated:
                self._log_drop(peer, e)
            else:
                with self._lock:
                    was_cut = conn in self._cut
                if was_cut:
                    reason = (f"cut to make room: too many connections in the handshake "
                              f"(at most {MAX_PENDING_PER_PEER} per address, {MAX_PENDING} in all)")
                elif isinstance(e, TimeoutError):
                    reason = f"no answer to the challenge within {self._auth_timeout_s:.1f}s"
                else:
                    reason = str(e) or type(e).__name__
                self._failures.record(host, reason, logging.WARNING
                                      if isinstance(e, (_BadRequest, EOFError, TimeoutError))
                                      else logging.INFO)
        except Exception:
            log.exception("transfer: error serving %s", peer)
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)
                self._unpend(conn)
                self._cut.discard(conn)

    def _log_drop(self, peer: tuple, e: BaseException) -> None:
        """A connection that had authenticated ended badly: one line (its client holds
        the secret, so it is not rate-limited)."""
        if isinstance(e, (_BadRequest, EOFError)):
            log.warning("transfer: dropped connection from %s: %s", peer, e)
        elif isinstance(e, TimeoutError):
            log.warning("transfer: dropped connection from %s: no progress within %.1fs",
                        peer, self._request_timeout_s)
        else:
            log.info("transfer: connection from %s ended: %s", peer, e)

    def _authenticate(self, conn: socket.socket) -> None:
        """Challenge the client; raises _BadRequest unless it answers with the secret
        within the auth timeout, counted from the connection's start."""
        deadline = time.monotonic() + self._auth_timeout_s
        conn.settimeout(self._auth_timeout_s)
        challenge = os.urandom(CHALLENGE_BYTES)
        conn.sendall(HELLO + challenge)
        answer = _recv_exact(conn, AUTH_BYTES, deadline=deadline)
        if not hmac.compare_digest(answer, auth_answer(self._secret, challenge)):
            raise _BadRequest("authentication failed (wrong cluster secret)")
        with self._lock:
            if not self._unpend(conn):  # cut to make room while it answered
                raise EOFError("cut while authenticating")
        conn.sendall(AUTH_OK)

    def _serve_request(self, conn: socket.socket) -> bool:
        """Answer one request; False when the client closed the connection between requests."""
        magic = _recv_exact(conn, len(MAGIC), eof_ok=True)
        if not magic:
            return False
        if magic != MAGIC:
            raise _BadRequest(f"bad magic {magic!r}")
        id_len = _recv_exact(conn, 1)[0]
        if not 0 < id_len <= MAX_ID_BYTES:
            raise _BadRequest(f"object id length {id_len} (at most {MAX_ID_BYTES})")
        raw_id = _recv_exact(conn, id_len)
        if not _HEX.issuperset(raw_id):
            raise _BadRequest(f"object id {raw_id[:16]!r}... is not hex")
        view = self._shm.open(raw_id.decode("ascii"))
        if view is None:
            conn.sendall(_HEADER.pack(MISSING, 0))
            return True
        with view:
            conn.sendall(_HEADER.pack(FOUND, len(view)))
            go = _recv_exact(conn, 1)
            if go == SKIP:
                return True
            if go != GO:
                raise _BadRequest(f"bad go byte {go!r}")
            crc = _send_payload(conn, view)
        # Counted before the checksum goes out, so a client holding its copy sees it counted.
        with self._lock:
            self.served += 1
        conn.sendall(_CRC.pack(crc))
        return True


def _send_payload(sock: socket.socket, view: memoryview) -> int:
    """Send `view` chunk by chunk; returns its crc32, computed on the way."""
    crc = 0
    for start in range(0, len(view), CHUNK_BYTES):
        with view[start:start + CHUNK_BYTES] as chunk:
            crc = zlib.crc32(chunk, crc)
            sock.sendall(chunk)
    return crc


def _recv_payload(sock: socket.socket, dest: memoryview) -> int:
    """Fill `dest` from the socket; returns the crc32 of what arrived."""
    crc = 0
    size = len(dest)
    for start in range(0, size, CHUNK_BYTES):
        with dest[start:start + CHUNK_BYTES] as chunk:
            got, want = 0, len(chunk)
            while got < want:
                with chunk[got:] as rest:
                    n = sock.recv_into(rest)
                if n == 0:
                    raise EOFError(f"closed after {start + got} of {size} bytes")
                got += n
            crc = zlib.crc32(chunk, crc)
    return crc


def _recv_exact(sock: socket.socket, n: int, *, eof_ok: bool = False,
                deadline: float | None = None) -> bytes:
    """Exactly `n` bytes; b"" when `eof_ok` and the peer closed before sending any.
    With `deadline` (time.monotonic()), TimeoutError once it passes, however the bytes
    trickle in."""
    buf = bytearray(n)
    got = 0
    with memoryview(buf) as view:
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{got} of {n} bytes by the deadline")
                sock.settimeout(left)
            k = sock.recv_into(view[got:])
            if k == 0:
                if got == 0 and eof_ok:
                    return b""
                raise EOFError(f"closed after {got} of {n} bytes")
            got += k
    return bytes(buf)


def fetch(holders: Sequence[tuple[str, int]], object_id: str, shm: ShmStore | None,
          *, secret: bytes, timeout_s: float = 60.0) -> memoryview:
    """Pull object `object_id` from the first holder (host, port) that can supply it.

    With `shm` (this node's store) the object is written there, sealed, and returned
    mapped read-only; when another process of this node is already fetching it, this
    waits for that copy instead of transferring it twice. `secret` is the cluster secret
    the holders challenge for (see `security.transfer_secret`). Without `shm` the bytes are
    received into memory. `timeout_s` bounds connecting and each wait for data from a
    holder (a slow but steady holder is not cut off). Raises ObjectLostError when no
    holder supplies it (the holders tried and why each failed are logged), its subclass
    ObjectFetchTimedOutError when another local fetch of it does not finish within
    `timeout_s`, and ObjectStoreFullError or RaySystemError when this node's store fails.
    """
    if not (0 < len(object_id) <= MAX_ID_BYTES and _HEX.issuperset(object_id.encode())):
        raise ValueError(f"object id must be 1 to {MAX_ID_BYTES} hex digits, got {object_id!r}")
    if shm is not None and (view := shm.open(object_id)) is not None:
        return view
    failures: list[str] = []
    pending = list(holders)
    while pending:
        host, port = pending[0]
        try:
            view = _fetch_from(host, port, object_id, shm, timeout_s, secret)
        except (OSError, EOFError, _HolderFailed) as e:
            failures.append(f"{host}:{port} ({_describe(e)})")
            pending.pop(0)
            continue
        if view is None and shm is not None:  # another process of this node is writing it
            view = shm.wait_sealed(object_id, timeout_s)
            if view is None and shm.partial_path(object_id).exists():
                log.warning("transfer: object %s: another local fetch did not finish in %.1fs",
                            object_id, timeout_s)
                raise ObjectFetchTimedOutError(object_id)
        if view is not None:
            return view
        # else that writer died without sealing: fetch it ourselves, same holder first
    log.warning("transfer: object %s lost: %s", object_id,
                "; ".join(failures) or "no holders given")
    raise ObjectLostError(object_id)


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)


def _fetch_from(host: str, port: int, object_id: str, shm: ShmStore | None,
                timeout_s: float, secret: bytes) -> memoryview | None:
    """The object from one holder; None when another local writer already claimed it."""
    with socket.create_connection((host, port), timeout=min(timeout_s, CONNECT_TIMEOUT_S)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout_s)
        _answer_challenge(sock, secret)
        raw_id = object_id.encode("ascii")
        sock.sendall(MAGIC + bytes([len(raw_id)]) + raw_id)
        status, size = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
        if status == MISSING:
            raise _HolderFailed("does not have it")
        if status != FOUND:
            raise _HolderFailed(f"bad status byte {status}")
        if shm is None:
            return _receive_into_memory(sock, size)
        return _receive_into_store(sock, object_id, size, shm)


def _answer_challenge(sock: socket.socket, secret: bytes) -> None:
    hello = _recv_exact(sock, len(HELLO) + CHALLENGE_BYTES)
    if not hello.startswith(HELLO):
        raise _HolderFailed(f"not a taskmesh transfer server (greeting {hello[:4]!r})")
    sock.sendall(auth_answer(secret, hello[len(HELLO):]))
    try:
        ok = _recv_exact(sock, 1)
    except (EOFError, ConnectionResetError):
        ok = b""
    if ok != AUTH_OK:
        raise _HolderFailed("refused our cluster secret (is it the same cluster?)")


def _receive_into_memory(sock: socket.socket, size: int) -> memoryview:
    """Into an anonymous mapping rather than a bytearray: it comes zeroed by the kernel,
    which skips the bytearray's memset pass over the whole object."""
    if size == 0:
        buf: mmap.mmap | bytearray = bytearray()
    else:
        try:
            buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
        except OSError as e:
            raise _HolderFailed(f"announced {size} bytes, more than this process can map: {e}") \
                from None
    sock.sendall(GO)
    view = memoryview(buf)
    _check_crc(sock, _recv_payload(sock, view))
    return view.toreadonly()


def _receive_into_store(sock: socket.socket, object_id: str, size: int,
                        shm: ShmStore) -> memoryview | None:
    seg = _claim(shm, object_id, size)
    if seg is None:
        sock.sendall(SKIP)
        return None
    try:
        sock.sendall(GO)
        _check_crc(sock, _recv_payload(sock, seg.buf))
    except BaseException:
        seg.abort()
        raise
    return _publish(seg, shm, object_id)


def _claim(shm: ShmStore, object_id: str, size: int) -> Segment | None:
    """A segment for the object, or None when another writer of this node has it. This
    node's own failures are raised as RayErrors, not OSErrors: another holder would not
    help, so they must not send `fetch` on to the next one."""
    free = free_bytes(shm.root)
    if size > free:
        raise ObjectStoreFullError(f"object {object_id} ({size} bytes) does not fit in "
                                   f"the free shared memory of {shm.root} ({free} bytes free)")
    try:
        return shm.create(object_id, size)
    except FileExistsError:
        return None
    except OSError as e:
        raise RaySystemError(f"cannot create object {object_id} in {shm.root}: {e!r}") from e


def _publish(seg: Segment, shm: ShmStore, object_id: str) -> memoryview | None:
    """Seal the received copy and map it; None when it must be waited for after all."""
    try:
        seg.seal()
    except FileNotFoundError:
        # A waiter on this node took our partial file for a dead writer's and removed it;
        # it is fetching the object again, so wait for that copy like any other waiter.
        return None
    except OSError as e:
        raise RaySystemError(f"cannot seal object {object_id} in {shm.root}: {e!r}") from e
    return shm.open(object_id)  # None only if freed at once; then fetch waits and retries


def _check_crc(sock: socket.socket, crc: int) -> None:
    (sent,) = _CRC.unpack(_recv_exact(sock, _CRC.size))
    if sent != crc:
        raise _HolderFailed(f"checksum mismatch (sent {sent:08x}, received data {crc:08x})")
