"""The grammars every process shares, checked as plain values: task, object and item
ids, shared-memory descriptors, and Redis addresses with their passwords, Sentinels and
TLS files (tests/test_cluster.py and tests/test_sentinel.py hold the canonical forms)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskmesh._base import ids
from taskmesh._core.generators import MAX_ITEMS, item_id
from taskmesh.objects.plane import parse_descriptor, shm_descriptor
from taskmesh.store.connection import (
    ENV_TLS_CA_FILE,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    SentinelAddress,
    TlsFiles,
    check_tls_files,
    mask_password,
    parse_sentinel_address,
    tls_connection_kwargs,
    with_password,
)

HEX = set("0123456789abcdef")

# ---- ids --------------------------------------------------------------------------------


def test_ids_nest_owner_task_and_index() -> None:
    owner = ids.new_owner_tag()
    task = ids.new_task_id(owner)
    assert len(owner) == ids.OWNER_TAG_LEN and len(task) == ids.TASK_ID_LEN
    assert set(owner + task) <= HEX
    for index in (0, 1, 7, 0xFFFF):
        oid = ids.object_id(task, index)
        assert len(oid) == ids.TASK_ID_LEN + ids.INDEX_LEN
        assert (ids.owner_of(oid), ids.task_of(oid), ids.index_of(oid)) == (owner, task, index)
    assert ids.object_id(task, 0).endswith("0000")  # a put
    assert ids.owner_of(task) == owner  # an actor id starts with its creator's tag as well


def test_new_ids_do_not_repeat() -> None:
    owner = ids.new_owner_tag()
    assert len({ids.new_task_id(owner) for _ in range(1000)}) == 1000


def test_generator_items_follow_the_generator_ref() -> None:
    task = ids.new_task_id(ids.new_owner_tag())
    assert ids.index_of(item_id(task, 0)) == 2  # index 1 is the generator ref itself
    last = item_id(task, MAX_ITEMS - 1)
    assert ids.index_of(last) == 0xFFFF and ids.task_of(last) == task


@pytest.mark.parametrize("node_id", ["n1", "0123abcd" * 4, "a b"])
def test_shm_descriptors_round_trip(node_id: str) -> None:
    assert parse_descriptor(shm_descriptor(123_456_789, node_id)) == (123_456_789, node_id)


# ---- addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "password", "expected"), [
    ("redis://h:1", "pw", "redis://:pw@h:1"),
    ("redis://:old@h:1/0", "new", "redis://:new@h:1/0"),
    ("redis://user:old@h:1", "new", "redis://user:new@h:1"),
    ("rediss://h:6380", "a/b@c:d", "rediss://:a%2Fb%40c%3Ad@h:6380"),
    ("redis://h:1", None, "redis://h:1"),
    ("redis://h:1", "", "redis://h:1"),
])
def test_with_password(url: str, password: str | None, expected: str) -> None:
    assert with_password(url, password) == expected


def test_a_quoted_password_is_masked_whole() -> None:
    url = with_password("redis://h:1", "a/b@c:d")
    assert mask_password(url) == "redis://:***@h:1"
    assert mask_password("redis://h:1") == "redis://h:1"
    assert mask_password("redis://user@h:1") == "redis://user@h:1"  # no password to hide


def test_sentinel_addresses_parse_into_their_parts() -> None:
    address = parse_sentinel_address(
        "redis+sentinel://app:p%40ss@h1,[::1]:26380,h3:7/my%20primary/2?sentinel_password=s")
    assert address == SentinelAddress(
        sentinels=(("h1", 26379), ("::1", 26380), ("h3", 7)), master_name="my primary",
        username="app", password="p@ss", db=2, sentinel_password="s")
    assert parse_sentinel_address(address.url()) == address
    bare = parse_sentinel_address("redis+sentinel://h/m")
    assert (bare.username, bare.password, bare.db, bare.sentinel_password) == (None, None, 0, None)
    assert parse_sentinel_address("redis+sentinel://:pw@h/m").password == "pw"


@pytest.mark.parametrize(("bad", "why"), [
    ("redis://h:1/m", "expected redis+sentinel://"),
    ("redis+sentinel://h:0/m", "port is not a number in 1-65535"),
    ("redis+sentinel://:26379/m", "has no host name"),
    ("redis+sentinel://h/m?db=1", "unknown option(s) db"),
])
def test_bad_sentinel_addresses_say_what_is_wrong(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match="Invalid address") as info:
        parse_sentinel_address(bad)
    assert why in str(info.value)


# ---- TLS files ----------------------------------------------------------------------------


def test_tls_files_from_the_environment_and_back() -> None:
    env = {ENV_TLS_CA_FILE: "/ca.pem", ENV_TLS_CERT: "", ENV_TLS_KEY: "/k.pem"}
    files = TlsFiles.from_env(env)
    assert files == TlsFiles("/ca.pem", None, "/k.pem") and files
    assert files.env() == {ENV_TLS_CA_FILE: "/ca.pem", ENV_TLS_KEY: "/k.pem"}
    assert files.connection_kwargs() == {"ssl_ca_certs": "/ca.pem", "ssl_keyfile": "/k.pem"}
    assert not TlsFiles.from_env({}) and TlsFiles().connection_kwargs() == {}


def test_only_rediss_addresses_get_tls_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    given = TlsFiles("/ca.pem")
    for name in (ENV_TLS_CA_FILE, ENV_TLS_CERT, ENV_TLS_KEY):
        monkeypatch.delenv(name, raising=False)
    assert tls_connection_kwargs("redis://h:1") == {}
    assert tls_connection_kwargs("rediss://h:1", given) == {"ssl_ca_certs": "/ca.pem"}
    monkeypatch.setenv(ENV_TLS_CERT, "/env-cert.pem")
    assert tls_connection_kwargs("rediss://h:1") == {"ssl_certfile": "/env-cert.pem"}
    assert tls_connection_kwargs("rediss://h:1", given) == {"ssl_ca_certs": "/ca.pem"}  # given wins


@pytest.mark.parametrize("url", ["redis://:hunter2@h:1", "unix:///tmp/r.sock",
                                 "redis+sentinel://h:26379/main"])
def test_tls_files_with_an_address_that_is_not_rediss_are_an_error(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rather than a plaintext connection where TLS was asked for."""
    with pytest.raises(ValueError, match="not rediss://") as given:
        tls_connection_kwargs(url, TlsFiles("/ca.pem"))
    monkeypatch.setenv(ENV_TLS_CERT, "/env-cert.pem")
    with pytest.raises(ValueError, match="--tls-ca-file/--tls-cert/--tls-key") as from_env:
        tls_connection_kwargs(url)
    assert "hunter2" not in str(given.value) + str(from_env.value)


def test_unreadable_or_half_given_tls_files_are_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    check_tls_files(TlsFiles(None, str(cert), str(key)))
    with pytest.raises(ValueError, match="tls_ca_file: cannot read"):
        check_tls_files(TlsFiles(str(tmp_path / "missing.pem")))
    with pytest.raises(ValueError, match="tls_cert and tls_key must be given together"):
        check_tls_files(TlsFiles(None, str(cert)))
    if os.geteuid() != 0:  # root reads any file
        key.chmod(0)
        with pytest.raises(ValueError, match="tls_key: cannot read"):
            check_tls_files(TlsFiles(None, str(cert), str(key)))
