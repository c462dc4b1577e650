"""Two Linux network namespaces joined through the host, for tests that need nodes with
addresses of their own on a real (virtual) network.

Each namespace `i` (1 and 2) gets a veth pair: the host side holds 10.R.i.1/24 and the
namespace side 10.R.i.2/24 with a default route via the host, which forwards between them.
So a process in namespace 1 reaches one in namespace 2 only through the kernel's IP stack
and the host's forwarding, the way two machines on two subnets would; the host reaches
both directly. Names carry a random suffix so concurrent runs do not collide.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
INDEXES = (1, 2)


class NetnsUnavailable(Exception):
    """This host does not let us create namespaces (not root, no `ip`, a sandbox)."""


@dataclass
class NamespacePair:
    suffix: str
    subnet: int  # R in 10.R.i.x
    created_ns: list[str] = field(default_factory=list)
    created_links: list[str] = field(default_factory=list)
    old_ip_forward: str | None = None

    def ns(self, i: int) -> str:
        return f"tmN{self.suffix}_{i}"

    def host_link(self, i: int) -> str:
        return f"vh{self.suffix}_{i}"

    def ns_link(self, i: int) -> str:
        return f"vn{self.suffix}_{i}"

    def host_ip(self, i: int) -> str:
        """The host's address on namespace i's link: where that namespace reaches the host."""
        return f"10.{self.subnet}.{i}.1"

    def ns_ip(self, i: int) -> str:
        return f"10.{self.subnet}.{i}.2"

    def exec_prefix(self, i: int) -> list[str]:
        """Prefix of a command to run it inside namespace i (`ip netns exec` execs it, so
        the pid of the process started is the command's own)."""
        return ["ip", "netns", "exec", self.ns(i)]

    def link_bytes(self, i: int) -> tuple[int, int]:
        """(rx, tx) byte counters of the host side of namespace i's link: rx is what the
        namespace sent out, tx what the host delivered into it."""
        stats = Path("/sys/class/net") / self.host_link(i) / "statistics"
        return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _free_subnet() -> int:
    """An R in 200..250 whose 10.R.0.0/16 no address or route of the host uses yet."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"],
                            capture_output=True, text=True, timeout=10).stdout
    addrs = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, timeout=10).stdout
    candidates = [r for r in range(200, 251) if f"10.{r}." not in routes + addrs]
    if not candidates:
        raise NetnsUnavailable("no free 10.R.0.0/16 subnet (R in 200..250)")
    return random.choice(candidates)


def _check_allowed() -> None:
    if sys.platform != "linux":
        raise NetnsUnavailable("network namespaces are Linux-only")
    if os.geteuid() != 0:
        raise NetnsUnavailable("not running as root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")


def _setup(pair: NamespacePair) -> None:
    for i in INDEXES:
        try:
            _ip("netns", "add", pair.ns(i))
        except RuntimeError as e:
            if not pair.created_ns:
                raise NetnsUnavailable(str(e)) from None
            raise
        pair.created_ns.append(pair.ns(i))
        _ip("link", "add", pair.host_link(i), "type", "veth", "peer", "name", pair.ns_link(i))
        pair.created_links.append(pair.host_link(i))
        _ip("link", "set", pair.ns_link(i), "netns", pair.ns(i))
        _ip("addr", "add", f"{pair.host_ip(i)}/24", "dev", pair.host_link(i))
        _ip("link", "set", pair.host_link(i), "up")
        inside = ["-n", pair.ns(i)]
        _ip(*inside, "addr", "add", f"{pair.ns_ip(i)}/24", "dev", pair.ns_link(i))
        _ip(*inside, "link", "set", pair.ns_link(i), "up")
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "route", "add", "default", "via", pair.host_ip(i))
    pair.old_ip_forward = IP_FORWARD.read_text().strip()
    IP_FORWARD.write_text("1\n")


def _teardown(pair: NamespacePair) -> list[str]:
    """Undo everything `_setup` did, whatever its progress; returns what could not be undone."""
    problems = []
    if pair.old_ip_forward is not None:
        try:
            IP_FORWARD.write_text(pair.old_ip_forward + "\n")
        except OSError as e:
            problems.append(f"restoring ip_forward: {e}")
    for ns in pair.created_ns:
        try:
            _ip("netns", "del", ns)  # takes the veth end inside, and so its peer, with it
        except RuntimeError as e:
            problems.append(str(e))
    for link in pair.created_links:
        if Path("/sys/class/net", link).exists():
            try:
                _ip("link", "del", link)
            except RuntimeError as e:
                problems.append(str(e))
    return problems


def _forwarding_works(pair: NamespacePair) -> str | None:
    """None when namespace 2 can open a TCP connection to namespace 1 through the host;
    else why not (a firewall dropping forwarded packets, say)."""
    listener = subprocess.Popen(
        [*pair.exec_prefix(1), sys.executable, "-c",
         "import socket, sys\n"
         f"s = socket.create_server(({pair.ns_ip(1)!r}, 0)); s.settimeout(5)\n"
         "print(s.getsockname()[1], flush=True)\n"
         "c, _ = s.accept(); c.sendall(b'ok'); c.close()\n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        port = listener.stdout.readline().strip()
        if not port:
            return f"could not listen in {pair.ns(1)}: {_last_line(listener.communicate(timeout=5)[1])}"
        connect = subprocess.run(
            [*pair.exec_prefix(2), sys.executable, "-c",
             "import socket\n"
             f"c = socket.create_connection(({pair.ns_ip(1)!r}, {port}), timeout=3)\n"
             "assert c.recv(2) == b'ok'\n"],
            capture_output=True, text=True, timeout=15)
        if connect.returncode != 0:
            return (f"{pair.ns(2)} cannot reach {pair.ns_ip(1)}:{port} through the host "
                    f"(is forwarding blocked by a firewall?): {_last_line(connect.stderr)}")
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            listener.kill()
        listener.communicate()


def _last_line(text: str) -> str:
    """The exception line of a Python traceback (or whatever a command said last)."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no output)"


@contextlib.contextmanager
def namespace_pair() -> Iterator[NamespacePair]:
    """Create the two namespaces and their links; always removed on exit, and the host's
    ip_forward setting restored. Raises NetnsUnavailable when this host does not allow
    it (whatever was created by then is removed first)."""
    _check_allowed()
    pair = NamespacePair(suffix=secrets.token_hex(3), subnet=_free_subnet())
    try:
        _setup(pair)
        reason = _forwarding_works(pair)
        if reason:
            raise NetnsUnavailable(reason)
        yield pair
    except BaseException as e:
        # The first failure is the one worth reading; teardown trouble rides along as a note.
        for problem in _teardown(pair):
            e.add_note(f"network namespace teardown: {problem}")
        raise
    problems = _teardown(pair)
    assert not problems, f"network namespace teardown failed: {problems}"
