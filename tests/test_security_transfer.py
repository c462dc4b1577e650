"""The object-transfer server authenticates every connection before it reads a request,
and no input, authenticated or not, stops it from serving the next client."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from taskmesh.exceptions import ObjectLostError
from taskmesh.objects import transfer
from taskmesh.objects.shm import ShmStore
from taskmesh.objects.transfer import (
    AUTH_TIMEOUT_S,
    CHALLENGE_BYTES,
    HELLO,
    MAGIC,
    MAX_CONNECTIONS,
    MAX_PENDING_PER_PEER,
    TransferServer,
    auth_answer,
    fetch,
)
from taskmesh.security import transfer_secret
from taskmesh.store import Store

LOCAL = "127.0.0.1"
SECRET = os.urandom(32)


@pytest.fixture
def stores() -> Iterator[tuple[ShmStore, ShmStore]]:
    made = [ShmStore.create_for_node(f"test-sec-{os.urandom(6).hex()}") for _ in range(2)]
    yield made[0], made[1]
    for s in made:
        s.destroy()


@pytest.fixture
def server(stores: tuple[ShmStore, ShmStore]) -> Iterator[TransferServer]:
    srv = TransferServer(stores[0], LOCAL, secret=SECRET, request_timeout_s=0.5)
    srv.start()
    yield srv
    srv.stop()


def put(store: ShmStore, payload: bytes) -> str:
    oid = os.urandom(20).hex()
    with store.create(oid, len(payload)) as seg:
        seg.buf[:] = payload
    return oid


def exchange(port: int, data: bytes, *, secret: bytes | None) -> tuple[bytes, bytes]:
    """Connect, answer the challenge with `secret` (or send `data` in its place), send
    `data`, end our side; returns (greeting, everything the server sent after it)."""
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        hello = sock.recv(len(HELLO) + CHALLENGE_BYTES, socket.MSG_WAITALL)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            if secret is not None:
                sock.sendall(auth_answer(secret, hello[len(HELLO):]))
            sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                reply += chunk
        return hello, reply


def request(oid: str) -> bytes:
    raw = oid.encode()
    return MAGIC + bytes([len(raw)]) + raw + b"\x01"


def test_a_client_without_the_secret_gets_nothing(
        stores: tuple[ShmStore, ShmStore], server: TransferServer,
        caplog: pytest.LogCaptureFixture) -> None:
    src, dst = stores
    payload = os.urandom(2_000_000)
    oid = put(src, payload)
    with caplog.at_level(logging.WARNING, logger="taskmesh.transfer"):
        with pytest.raises(ObjectLostError):
            fetch([(LOCAL, server.port)], oid, dst, secret=os.urandom(32), timeout_s=5)
        # A client that skips the handshake and sends a well-formed request (long enough
        # to be taken as an answer) gets no byte of the object.
        hello, reply = exchange(server.port, request(oid) * 2, secret=None)
    assert hello.startswith(HELLO)
    assert reply == b""
    assert server.served == 0
    # Both dropped; the second from the same address within a minute is only counted.
    assert caplog.text.count("authentication failed") == 1
    assert "refused our cluster secret" in caplog.text
    assert fetch([(LOCAL, server.port)], oid, dst, secret=SECRET) == payload
    assert server.served == 1


def test_each_connection_gets_a_fresh_challenge(server: TransferServer) -> None:
    """A recorded answer does not open the next connection."""
    first, _ = exchange(server.port, b"", secret=SECRET)
    second, _ = exchange(server.port, b"", secret=SECRET)
    assert first != second
    with socket.create_connection((LOCAL, server.port), timeout=5) as sock:
        sock.recv(len(HELLO) + CHALLENGE_BYTES, socket.MSG_WAITALL)
        sock.sendall(auth_answer(SECRET, first[len(HELLO):]))  # replayed
        assert sock.recv(1) == b""


def fuzz_cases(seed: int) -> list[tuple[bytes | None, bytes]]:
    """(secret or None, bytes sent): noise before and after authentication, truncated
    frames, and length fields at their extremes."""
    rng = random.Random(seed)
    oid = "ab" * 20
    cases: list[tuple[bytes | None, bytes]] = []
    for _ in range(60):
        cases.append((None, rng.randbytes(rng.choice([0, 1, 31, 32, 33, 100, 4096]))))
        cases.append((SECRET, rng.randbytes(rng.randint(1, 2000))))
    frame = request(oid)
    cases += [(SECRET, frame[:n]) for n in range(1, len(frame))]  # every truncation
    cases += [(SECRET, MAGIC + bytes([n]) + b"f" * min(n, 10)) for n in (0, 65, 128, 255)]
    cases += [(SECRET, MAGIC + b"\xff" * 10_000),                  # huge length bytes
              (SECRET, struct.pack("!Q", 2 ** 64 - 1) * 100),     # a u64 prefix at its max
              (SECRET, b"TMX\x09" + frame[4:]),                   # an unknown version
              (SECRET, frame[:-1] + b"\x07"),                     # a bad go byte
              (SECRET, frame * 50 + b"\x00" * 3)]                 # many requests, then junk
    return cases


def test_fuzzed_input_never_stops_the_server(
        stores: tuple[ShmStore, ShmStore], server: TransferServer,
        caplog: pytest.LogCaptureFixture) -> None:
    src, dst = stores
    payload = os.urandom(300_000)
    oid = put(src, payload)
    cases = fuzz_cases(seed=11)
    with caplog.at_level(logging.WARNING, logger="taskmesh.transfer"):
        for secret, data in cases:
            hello, _ = exchange(server.port, data, secret=secret)
            assert hello.startswith(HELLO)
    assert "Traceback" not in caplog.text and "error serving" not in caplog.text
    # Every slot was given back: more concurrent clients than the server has slots all get served.
    results: list[bytes] = []
    lock = threading.Lock()

    def reader() -> None:
        got = bytes(fetch([(LOCAL, server.port)], oid, None, secret=SECRET, timeout_s=10))
        with lock:
            results.append(got)

    threads = [threading.Thread(target=reader) for _ in range(MAX_CONNECTIONS + 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [payload] * len(threads)
    assert fetch([(LOCAL, server.port)], oid, dst, secret=SECRET) == payload


def test_silent_clients_are_cut_off_after_the_auth_timeout(server: TransferServer) -> None:
    with socket.create_connection((LOCAL, server.port), timeout=10) as sock:
        assert sock.recv(len(HELLO) + CHALLENGE_BYTES, socket.MSG_WAITALL).startswith(HELLO)
        sock.sendall(b"x" * 5)  # part of an answer, then nothing
        assert sock.recv(1) == b""


def test_the_server_refuses_to_start_without_a_secret(stores: tuple[ShmStore, ShmStore]) -> None:
    with pytest.raises(ValueError, match="secret"):
        TransferServer(stores[0], LOCAL, secret=b"")


def test_the_secret_is_made_once_and_shared(store: Store) -> None:
    """The first caller creates it; every later store of the cluster reads the same one."""
    first = transfer_secret(store)
    other = Store(store.url)
    try:
        assert transfer_secret(other) == first
        assert len(first) == 32
        assert store.redis.get(store.keys.transfer_secret()) == first.hex().encode()
    finally:
        other.close()



# ---- abuse without the secret: idle sockets, trickled answers, floods of junk ---------------

def idle_sockets(count: int, source: str) -> list[socket.socket]:
    """`count` connections from address `source` (any 127.x.y.z is this machine) that
    never answer the challenge."""
    out = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        out.append(sock)
    return out


def test_idle_connections_do_not_delay_a_transfer(stores: tuple[ShmStore, ShmStore]) -> None:
    """Hundreds of idle sockets, from the fetching address and from others, take none
    of the slots of authenticated clients: the fetch does not wait for them to time out
    (AUTH_TIMEOUT_S, which bounds how long the server keeps each)."""
    src, dst = stores
    srv = TransferServer(src, LOCAL, secret=SECRET)  # the real timeouts
    srv.start()
    payload = os.urandom(2_000_000)
    oid = put(src, payload)
    socks = idle_sockets(200, LOCAL) + [
        sock for n in range(2, 12) for sock in idle_sockets(20, f"127.0.0.{n}")]
    try:
        for sock in socks:
            sock.settimeout(5)
            sock.connect((LOCAL, srv.port))
        started = time.monotonic()
        got = fetch([(LOCAL, srv.port)], oid, dst, secret=SECRET, timeout_s=30)
        elapsed = time.monotonic() - started
        assert got == payload
        assert elapsed < AUTH_TIMEOUT_S, elapsed  # not queued behind the idle sockets
        # Each address keeps at most MAX_PENDING_PER_PEER of them open: the rest were cut.
        assert sum(map(was_closed, socks[:200])) >= 200 - MAX_PENDING_PER_PEER
    finally:
        for sock in socks:
            sock.close()
        srv.stop()


def was_closed(sock: socket.socket) -> bool:
    """Whether the server closed this connection (after its greeting, if any)."""
    sock.settimeout(0.01)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_an_answer_trickled_in_is_cut_at_the_auth_timeout(
        stores: tuple[ShmStore, ShmStore], caplog: pytest.LogCaptureFixture) -> None:
    """The auth timeout bounds the whole handshake, not each byte of it."""
    srv = TransferServer(stores[0], LOCAL, secret=SECRET, auth_timeout_s=0.5)
    srv.start()
    try:
        with caplog.at_level(logging.WARNING, logger="taskmesh.transfer"), \
                socket.create_connection((LOCAL, srv.port), timeout=5) as sock:
            hello = sock.recv(len(HELLO) + CHALLENGE_BYTES, socket.MSG_WAITALL)
            answer = auth_answer(SECRET, hello[len(HELLO):])
            sent = 0
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for byte in answer:  # 32 bytes, one per 0.15 s: 4.8 s in all
                    if select.select([sock], [], [], 0.15)[0]:
                        break  # the server closed the connection
                    sock.sendall(bytes([byte]))
                    sent += 1
            assert sock.recv(1) == b""
        assert sent < len(answer)
        assert "no answer to the challenge within 0.5s" in caplog.text
    finally:
        srv.stop()


def wrong_answer(port: int, source: str) -> None:
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((LOCAL, port))
        sock.recv(len(HELLO) + CHALLENGE_BYTES, socket.MSG_WAITALL)
        with contextlib.suppress(OSError):
            sock.sendall(b"\x00" * 32)
            sock.recv(1)


def test_junk_handshakes_are_logged_at_a_bounded_rate(
        stores: tuple[ShmStore, ShmStore], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One line per address per window, for a bounded number of addresses; the rest are
    counted, and the count is logged once the window has passed."""
    monkeypatch.setattr(transfer, "FAILURE_LOG_WINDOW_S", 1.0)
    monkeypatch.setattr(transfer, "FAILURE_LOG_PEERS", 3)
    srv = TransferServer(stores[0], LOCAL, secret=SECRET)
    srv.start()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "taskmesh.transfer"]

    try:
        with caplog.at_level(logging.INFO, logger="taskmesh.transfer"):
            for _ in range(200):
                wrong_answer(srv.port, LOCAL)
            for n in range(2, 8):  # six more addresses: three more lines at most
                wrong_answer(srv.port, f"127.0.0.{n}")
            first = lines()
            time.sleep(1.1)
            wrong_answer(srv.port, LOCAL)
            deadline = time.monotonic() + 5
            while len(lines()) < len(first) + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert len(first) == 3, first
        assert all("authentication failed" in line for line in first)
        summary, again = lines()[len(first):]
        assert "203 more connection(s) dropped before authenticating" in summary
        assert again.startswith(f"transfer: dropped connection from {LOCAL} before it authenticated")
    finally:
        srv.stop()
