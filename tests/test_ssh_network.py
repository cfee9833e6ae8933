"""A Pi on Wi-Fi, emulated: the SSH device behind a TCP proxy that adds delay, limits bandwidth and cuts the link."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SshServer, cpu_ticks, dense_onnx, serve_for_tests, wait_until, write_profile
from tcpproxy import TcpProxy

from edgecompress.config import resolve_device
from edgecompress.device import measure_request, open_session, sha256_bytes

DELAY_S = 0.005  # each way: a 10 ms round trip, a typical Wi-Fi hop
RATE = 2.5e6  # bytes/s each way: 20 Mbit/s


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    yield from serve_for_tests(tmp_path_factory)


@pytest.fixture
def wifi(sshd: SshServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(("127.0.0.1", sshd.port), delay_s=DELAY_S, rate_bytes_s=RATE)
    yield proxy
    proxy.close()


def _profile_via(sshd: SshServer, proxy: TcpProxy, folder: Path):
    # The proxy is another port of the same host: known_hosts must name that port, as it would name a Pi's address.
    path = write_profile(sshd, folder, port=proxy.port)
    (folder / "known_hosts").write_text(sshd.known_hosts_line().replace(f":{sshd.port} ", f":{proxy.port} "))
    return resolve_device(str(path))


def test_bench_over_a_slow_link_pays_its_delay_and_bandwidth(sshd: SshServer, wifi: TcpProxy, tmp_path: Path) -> None:
    profile = _profile_via(sshd, wifi, tmp_path)
    data = dense_onnx(tmp_path / "m.onnx", 1 << 20).read_bytes()
    with open_session(profile) as session:
        t0 = time.perf_counter()
        session.request("has_model", {"sha256": "0" * 64})
        round_trip_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        progress: list[tuple[int, int]] = []
        sha = session.put_model(data, progress=lambda done, total: progress.append((done, total)))
        upload_s = time.perf_counter() - t0
        result = session.measure(sha, measure_request(profile, runs=5))
    assert len(result.latencies_ns) >= 5
    assert round_trip_s >= 2 * DELAY_S
    # 1 MiB at 2.5 MB/s cannot take less than 0.42 s: the limit was really in the path.
    assert upload_s >= 0.9 * len(data) / RATE
    assert progress[-1] == (len(data), len(data)) and len(progress) == 2
    assert wifi.bytes_up > len(data)


def test_link_cut_in_the_middle_of_an_upload_resumes_where_it_stopped(
    sshd: SshServer, wifi: TcpProxy, tmp_path: Path
) -> None:
    profile = _profile_via(sshd, wifi, tmp_path)
    wifi.rate_bytes_s = None  # full speed: only the cut matters here
    data = dense_onnx(tmp_path / "m.onnx", 6 << 20).read_bytes()
    events: list[str] = []
    with open_session(profile, on_event=events.append) as session:
        session.backoff_s = 0.05
        before = wifi.bytes_up
        wifi.cut_after_upload(int(3.5 * (1 << 20)))
        sha = session.put_model(data)
        assert sha == sha256_bytes(data)
        assert session.request("has_model", {"sha256": sha})[0]["cached"] is True
        sent = wifi.bytes_up - before
    assert session.reconnects == 1 and wifi.connections == 2
    assert any("lost" in e for e in events)
    # Resumed, not restarted: at most one 1 MiB chunk is sent twice (plus SSH framing and the bootstrap).
    assert len(data) < sent < len(data) + (1 << 20) + 256 * 1024


def test_silently_dead_link_is_abandoned_by_the_watchdog(sshd: SshServer, wifi: TcpProxy, tmp_path: Path) -> None:
    profile = _profile_via(sshd, wifi, tmp_path)
    with open_session(profile) as session:
        session.backoff_s = 0.05
        wifi.freeze()  # no reset, no FIN: the packets just stop, as when a Pi drops off the Wi-Fi
        t0 = time.perf_counter()
        status, _ = session.request("has_model", {"sha256": "0" * 64}, timeout_s=1.0)
        elapsed = time.perf_counter() - t0
    assert status["cached"] is False
    assert session.reconnects == 1 and wifi.connections == 2
    assert elapsed < 15


def test_link_stalled_mid_measure_is_noticed_from_the_measure_duration(
    sshd: SshServer, wifi: TcpProxy, tmp_path: Path
) -> None:
    """A 2 s measure whose answer never comes is given up after its expected duration plus a margin (it used to be
    10 minutes whatever the request), then re-opened and measured again."""
    profile = _profile_via(sshd, wifi, tmp_path)
    wifi.rate_bytes_s, wifi.delay_s = None, 0.0
    with open_session(profile) as session:
        session.backoff_s = 0.05
        sha = session.put_model(dense_onnx(tmp_path / "m.onnx").read_bytes())
        spec = measure_request(profile, runs=1, min_seconds=2.0, max_seconds=2.0, extra={"repeat_if_throttled": False})
        pid = session.info["pid"]
        baseline = cpu_ticks(pid)
        box: dict[str, object] = {}

        def work() -> None:
            try:
                box["result"] = session.measure(sha, spec)
            except Exception as exc:  # handed to the test thread
                box["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        # The agent burns CPU only while it measures: then the link goes quiet, as a Wi-Fi that stops passing packets.
        wait_until(lambda: "error" in box or cpu_ticks(pid) - baseline >= 30, what=f"agent {pid} to start measuring")
        wifi.freeze()
        t0 = time.perf_counter()
        thread.join(timeout=60)
        elapsed = time.perf_counter() - t0
        assert not thread.is_alive(), f"the stalled measure was not noticed within {elapsed:.0f} s"
        assert "error" not in box, box.get("error")
        assert session.reconnects == 1 and wifi.connections == 2
    assert spec.timeout_s() < 40 and elapsed < spec.timeout_s() + 15


def test_proxy_command_from_ssh_config(sshd: SshServer, tmp_path: Path) -> None:
    relay = Path(__file__).with_name("tcpproxy.py")
    (tmp_path / "ssh_config").write_text(
        f"Host *\n    IdentitiesOnly yes\n    ProxyCommand {sys.executable} {relay} %h %p\n"
    )
    profile = resolve_device(str(write_profile(sshd, tmp_path)))
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    with open_session(profile) as session:
        assert session.transport.target.proxy_command
        assert session.info["agent_version"]


def test_socket_dying_under_a_write_is_a_lost_link_not_a_crash(sshd: SshServer, tmp_path: Path) -> None:
    # Whichever of paramiko's threads notices first, a write on a dead socket raises EOFError (packetizer) or
    # OSError (closed channel); both must reconnect. CI once hit the EOFError path in the middle of an upload.
    profile = resolve_device(str(write_profile(sshd, tmp_path)))
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    data = dense_onnx(tmp_path / "m.onnx", 2 << 20).read_bytes()
    with open_session(profile) as session:
        session.backoff_s = 0.05
        for _ in range(3):
            channel = session._channel
            assert channel is not None
            channel.connection.client.get_transport().sock.close()
            session.request("has_model", {"sha256": "0" * 64})
        sha = session.put_model(data)
        assert session.request("has_model", {"sha256": sha})[0]["cached"] is True
    assert session.reconnects == 3
