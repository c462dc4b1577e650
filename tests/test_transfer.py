"""Object transfer between two nodes' shared-memory stores: real servers and sockets on
loopback, plus fake holders that misbehave in the ways a crashing node does."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator

import pytest

from taskmesh.exceptions import ObjectLostError
from taskmesh.objects.shm import ShmStore
from taskmesh.objects.transfer import (
    AUTH_BYTES,
    AUTH_OK,
    CHALLENGE_BYTES,
    HELLO,
    MAGIC,
    TransferServer,
    auth_answer,
)
from taskmesh.objects.transfer import fetch as fetch_with

LOCAL = "127.0.0.1"
SECRET = os.urandom(32)
fetch = functools.partial(fetch_with, secret=SECRET)
Respond = Callable[[socket.socket], None]


@pytest.fixture
def make_store() -> Iterator[Callable[[], ShmStore]]:
    """Stores of fresh random nodes, all removed from /dev/shm afterwards."""
    stores: list[ShmStore] = []

    def make() -> ShmStore:
        stores.append(ShmStore.create_for_node(f"test-transfer-{os.urandom(6).hex()}"))
        return stores[-1]

    yield make
    for store in stores:
        store.destroy()


@pytest.fixture
def src(make_store: Callable[[], ShmStore]) -> ShmStore:
    return make_store()


@pytest.fixture
def dst(make_store: Callable[[], ShmStore]) -> ShmStore:
    return make_store()


@pytest.fixture
def make_server() -> Iterator[Callable[..., TransferServer]]:
    """Started servers on loopback, all stopped afterwards."""
    servers: list[TransferServer] = []

    def make(store: ShmStore, **kwargs: float) -> TransferServer:
        server = TransferServer(store, LOCAL, secret=SECRET, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(src: ShmStore, make_server: Callable[..., TransferServer]) -> TransferServer:
    return make_server(src)


def put(store: ShmStore, payload: bytes) -> str:
    oid = os.urandom(20).hex()
    with store.create(oid, len(payload)) as seg:
        if payload:  # an empty segment's buf is a read-only b""
            seg.buf[:] = payload
    return oid


def holder(server: TransferServer) -> tuple[str, int]:
    return (LOCAL, server.port)


def partial_files(store: ShmStore) -> list[str]:
    return [p.name for p in store.root.glob("*.partial")]


@contextlib.contextmanager
def fake_holder(respond: Respond) -> Iterator[tuple[str, int]]:
    """A holder that reads each request and then does whatever `respond` does."""
    listener = socket.create_server((LOCAL, 0))

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                challenge = os.urandom(CHALLENGE_BYTES)
                conn.sendall(HELLO + challenge)
                conn.recv(AUTH_BYTES, socket.MSG_WAITALL)
                conn.sendall(AUTH_OK)
                (id_len,) = conn.recv(len(MAGIC) + 1, socket.MSG_WAITALL)[-1:]
                conn.recv(id_len, socket.MSG_WAITALL)
                respond(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield (LOCAL, listener.getsockname()[1])
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)


def sends(payload: bytes, *, cut_at: int | None = None, crc_xor: int = 0) -> Respond:
    """A response of `payload`, cut after `cut_at` bytes or with a checksum off by `crc_xor`."""

    def respond(conn: socket.socket) -> None:
        conn.sendall(struct.pack("!BQ", 1, len(payload)))
        conn.recv(1)  # the client's go-ahead
        if cut_at is not None:
            conn.sendall(payload[:cut_at])
            return
        conn.sendall(payload)
        conn.sendall(struct.pack("!I", zlib.crc32(payload) ^ crc_xor))

    return respond


def closed_port() -> int:
    with socket.create_server((LOCAL, 0)) as s:
        return s.getsockname()[1]


def test_round_trip_into_store_and_into_memory(src: ShmStore, dst: ShmStore,
                                               server: TransferServer) -> None:
    payload = random.Random(1).randbytes(50_000_000)
    oid = put(src, payload)

    view = fetch([holder(server)], oid, dst)
    assert view.readonly
    assert view == payload
    assert dst.contains(oid)
    assert partial_files(dst) == []

    in_memory = fetch([holder(server)], oid, None)
    assert in_memory.readonly
    assert in_memory == payload
    assert server.served == 2


def test_empty_object(src: ShmStore, dst: ShmStore, server: TransferServer) -> None:
    oid = put(src, b"")
    assert fetch([holder(server)], oid, dst) == b""
    assert dst.contains(oid)
    assert fetch([holder(server)], oid, None) == b""


def test_concurrent_fetches_transfer_once(src: ShmStore, dst: ShmStore,
                                          server: TransferServer) -> None:
    payload = os.urandom(20_000_000)
    oid = put(src, payload)
    barrier = threading.Barrier(4)
    results: list[bytes] = []

    def worker() -> None:
        barrier.wait()
        view = fetch([holder(server)], oid, dst)
        results.append(bytes(view))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert all(r == payload for r in results)
    assert server.served == 1


def test_falls_back_past_refusing_and_lacking_holders(
        src: ShmStore, dst: ShmStore, make_store: Callable[[], ShmStore],
        make_server: Callable[..., TransferServer], server: TransferServer) -> None:
    payload = os.urandom(1_000_000)
    oid = put(src, payload)
    lacking = make_server(make_store())
    holders = [(LOCAL, closed_port()), holder(lacking), holder(server)]
    assert fetch(holders, oid, dst) == payload
    assert fetch(holders, oid, None) == payload
    assert lacking.served == 0


def test_holder_dying_mid_way_is_skipped_and_leaves_no_partial(
        src: ShmStore, dst: ShmStore, server: TransferServer) -> None:
    payload = os.urandom(4_000_000)
    oid = put(src, payload)
    with fake_holder(sends(payload, cut_at=len(payload) // 2)) as dying:
        assert fetch([dying, holder(server)], oid, dst) == payload
        assert partial_files(dst) == []

        dst.delete([oid])
        with pytest.raises(ObjectLostError):
            fetch([dying], oid, dst, timeout_s=5)
    assert partial_files(dst) == []
    assert not dst.contains(oid)


def test_wrong_checksum_is_skipped(src: ShmStore, dst: ShmStore,
                                   server: TransferServer) -> None:
    payload = os.urandom(2_000_000)
    oid = put(src, payload)
    with fake_holder(sends(payload, crc_xor=1)) as corrupt:
        with pytest.raises(ObjectLostError):
            fetch([corrupt], oid, dst, timeout_s=5)
        assert partial_files(dst) == []
        assert not dst.contains(oid)
        with pytest.raises(ObjectLostError):
            fetch([corrupt], oid, None, timeout_s=5)
        assert fetch([corrupt, holder(server)], oid, dst) == payload


def test_missing_everywhere_raises_and_logs_why(dst: ShmStore, server: TransferServer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    oid = os.urandom(20).hex()
    refused = (LOCAL, closed_port())
    with (caplog.at_level(logging.WARNING, logger="taskmesh.transfer"),
          pytest.raises(ObjectLostError) as info):
        fetch([holder(server), refused], oid, dst)
    assert info.value.object_ref_hex == oid
    assert f"{LOCAL}:{server.port} (does not have it)" in caplog.text
    assert f"{LOCAL}:{refused[1]} (ConnectionRefusedError" in caplog.text
    assert partial_files(dst) == []


def test_rejects_invalid_object_ids(dst: ShmStore, server: TransferServer) -> None:
    for bad in ("", "xyz", "a" * 65, "ab cd"):
        with pytest.raises(ValueError):
            fetch([holder(server)], bad, dst)


def malformed_requests() -> list[bytes]:
    rng = random.Random(7)
    noise = [rng.randbytes(rng.randint(1, 300)) for _ in range(20)]
    truncated = [MAGIC[:2], MAGIC, MAGIC + b"\x28", MAGIC + b"\x28" + b"ab" * 5]
    bad_fields = [
        MAGIC + b"\xff" + b"a" * 255,   # enormous id length
        MAGIC + b"\x41" + b"a" * 65,    # one over the limit
        MAGIC + b"\x00",                # empty id
        MAGIC + b"\x04" + b"zz!!",      # not hex
        b"TMX\x02\x04abcd",             # unknown version
    ]
    return noise + truncated + bad_fields


def send_and_read_reply(port: int, data: bytes, *, secret: bytes | None = None) -> bytes:
    """Send `data` (after answering the challenge, with `secret`), end our side, and
    return what the server answered before closing (after the greeting)."""
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        hello = sock.recv(len(HELLO) + CHALLENGE_BYTES, socket.MSG_WAITALL)
        assert hello.startswith(HELLO)
        if secret is not None:
            sock.sendall(auth_answer(secret, hello[len(HELLO):]))
            assert sock.recv(1) == AUTH_OK
        reply = b""
        # The server may close (even reset) the connection before we are done sending.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                reply += chunk
        return reply


def test_server_survives_garbage(src: ShmStore, dst: ShmStore,
                                 make_server: Callable[..., TransferServer],
                                 caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(src, request_timeout_s=0.3)
    payload = os.urandom(3_000_000)
    oid = put(src, payload)
    requests = malformed_requests()
    with caplog.at_level(logging.WARNING, logger="taskmesh.transfer"):
        for data in requests:
            assert send_and_read_reply(server.port, data, secret=SECRET) == b""
        with socket.create_connection((LOCAL, server.port), timeout=5) as silent:
            silent.recv(len(HELLO) + CHALLENGE_BYTES, socket.MSG_WAITALL)
            assert silent.recv(1) == b""  # closed by the server's timeout
    dropped = [r for r in caplog.records if "dropped connection" in r.getMessage()]
    assert len(dropped) == len(requests) + 1
    assert fetch([holder(server)], oid, dst) == payload
    assert server.served == 1


def test_stop_is_idempotent_and_holders_then_fail_over(
        src: ShmStore, dst: ShmStore, make_server: Callable[..., TransferServer],
        server: TransferServer) -> None:
    payload = os.urandom(1_000_000)
    oid = put(src, payload)
    stopped = make_server(src)
    stopped.stop()
    stopped.stop()
    assert fetch([holder(stopped), holder(server)], oid, dst) == payload
    with pytest.raises(ObjectLostError):
        fetch([holder(stopped)], oid, None)
