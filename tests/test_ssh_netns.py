"""A device at its own address: sshd in a network namespace, reached over a veth pair, on port 22.

Skipped, with the reason, where network namespaces cannot be made (not root, or a container without CAP_NET_ADMIN).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sshd import SshServer, dense_onnx, start_sshd, write_profile

from edgecompress.config import resolve_device
from edgecompress.device import measure_request, open_session


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@dataclass
class Namespace:
    name: str
    host_if: str
    host_address: str
    device_address: str

    def link(self, up: bool) -> None:
        result = _ip("link", "set", self.host_if, "up" if up else "down")
        assert result.returncode == 0, result.stderr


def _free_subnet() -> ipaddress.IPv4Network:
    used = _ip("-o", "-4", "addr").stdout
    for third in range(os.getpid() % 200, os.getpid() % 200 + 50):
        net = ipaddress.IPv4Network(f"10.213.{third % 250}.0/30")
        if f"10.213.{third % 250}." not in used:
            return net
    pytest.skip("no free 10.213.x.0/30 subnet for the veth pair")


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CAP_NET_ADMIN); this test runs sshd at its own address")
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed")
    suffix = str(os.getpid())[-6:]
    ns = Namespace(f"ectest{suffix}", f"ech{suffix}", "", "")
    made = _ip("netns", "add", ns.name)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        net = _free_subnet()
        host, device = (str(a) for a in net.hosts())
        ns.host_address, ns.device_address = host, device
        for args in (
            ("link", "add", ns.host_if, "type", "veth", "peer", "name", f"ecd{suffix}", "netns", ns.name),
            ("addr", "add", f"{host}/30", "dev", ns.host_if),
            ("link", "set", ns.host_if, "up"),
            ("-n", ns.name, "addr", "add", f"{device}/30", "dev", f"ecd{suffix}"),
            ("-n", ns.name, "link", "set", f"ecd{suffix}", "up"),
            ("-n", ns.name, "link", "set", "lo", "up"),
        ):
            result = _ip(*args)
            if result.returncode != 0:
                pytest.skip(f"cannot set up a veth pair here (ip {' '.join(args)}): {result.stderr.strip()}")
        yield ns
    finally:
        _ip("link", "del", ns.host_if)
        _ip("netns", "del", ns.name)


@pytest.fixture(scope="module")
def device_sshd(namespace: Namespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(
        tmp_path_factory.mktemp("netns-sshd"),
        address=namespace.device_address,
        port=22,
        wrapper=("ip", "netns", "exec", namespace.name),
    )
    yield server
    server.stop()


def test_device_at_its_own_address_bootstraps_measures_and_survives_the_link_going_down(
    namespace: Namespace, device_sshd: SshServer, tmp_path: Path
) -> None:
    path = write_profile(device_sshd, tmp_path, port=None)
    (tmp_path / "known_hosts").write_text(device_sshd.known_hosts_line())
    assert device_sshd.known_hosts_line().startswith(f"{namespace.device_address} ")  # port 22: a plain name
    profile = resolve_device(str(path))
    link_back = threading.Event()

    def on_event(message: str) -> None:
        # The first lost link is the one we broke: the device comes back before the retry.
        if "lost" in message and not link_back.is_set():
            namespace.link(True)
            link_back.set()

    with open_session(profile, on_event=on_event) as session:
        assert session.transport.last_bootstrap.uploaded
        assert session.transport.target.port == 22
        sha = session.put_model(dense_onnx(tmp_path / "m.onnx").read_bytes())
        session.backoff_s = 0.1
        namespace.link(False)  # the Pi drops off the network: no reset, packets just stop
        status, _ = session.request("has_model", {"sha256": sha}, timeout_s=1.0)
        assert status["cached"] is True and link_back.is_set() and session.reconnects == 1
        result = session.measure(sha, measure_request(profile, runs=5))
        assert len(result.latencies_ns) >= 5
