"""The object-transfer server authenticates every connection before it reads a request,
and no input, authenticated or not, stops it from serving the next client."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from taskmesh.exceptions import ObjectLostError
from taskmesh.objects.shm import ShmStore
from taskmesh.objects.transfer import (
    CHALLENGE_BYTES,
    HELLO,
    MAGIC,
    MAX_CONNECTIONS,
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
    assert caplog.text.count("authentication failed") == 2
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

