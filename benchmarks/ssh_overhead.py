"""What does talking to a device over SSH cost per candidate, next to the local transport?

    nice python benchmarks/ssh_overhead.py [--reps 3] [--no-wifi] [--json out.json]

Starts a throwaway sshd on loopback (as the tests do) and measures, for the local transport, SSH over loopback, and
SSH through a proxy that emulates a Pi on Wi-Fi (5 ms each way, 20 Mbit/s): connecting, bootstrapping the agent
into an empty cache, opening a session with the agent cached, uploading a fresh 1 MB and 20 MB model, re-sending a
model the agent already holds, and one request round trip. Each figure is the median over --reps fresh caches.
Needs /usr/sbin/sshd and must run as a user that may log in to itself by key (root in the CI container).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sshd import dense_onnx, start_sshd, trusted_device  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402

from edgecompress.config import DeviceProfile, resolve_device  # noqa: E402
from edgecompress.device import open_session  # noqa: E402

SIZES = {"1 MB": 1_000_000, "20 MB": 20_000_000}
ROUND_TRIPS = 30


def measure_link(
    make_profile: Callable[[Path], DeviceProfile], models: dict[str, list[bytes]], reps: int, workdir: Path
) -> dict[str, list[float]]:
    """All the timings for one kind of link, ``reps`` times, each from an empty agent cache."""
    out: dict[str, list[float]] = defaultdict(list)
    for rep in range(reps):
        profile = make_profile(workdir / f"rep{rep}")
        t0 = time.perf_counter()
        session = open_session(profile)
        out["open, empty agent cache (s)"].append(time.perf_counter() - t0)
        transport = session.transport
        boot = getattr(transport, "last_bootstrap", None)
        if boot is not None:
            out["  of which SSH connect + auth (s)"].append(transport.last_connect_s)  # type: ignore[attr-defined]
            out["  of which probe of the device's Python (s)"].append(boot.probe_s)
            out["  of which agent upload over SFTP (s)"].append(boot.upload_s)
        session.close()
        t0 = time.perf_counter()
        session = open_session(profile)
        out["open, agent cached (s)"].append(time.perf_counter() - t0)
        trips = []
        for _ in range(ROUND_TRIPS):
            t0 = time.perf_counter()
            session.request("has_model", {"sha256": "0" * 64})
            trips.append(time.perf_counter() - t0)
        rtt_ms = 1000 * statistics.median(trips)
        out["request round trip (ms)"].append(rtt_ms)
        for label, blobs in models.items():
            data = blobs[rep]
            t0 = time.perf_counter()
            session.put_model(data)
            upload_s = time.perf_counter() - t0
            out[f"upload {label} model (s)"].append(upload_s)
            out[f"upload {label} throughput (MB/s)"].append(len(data) / upload_s / 1e6)
            # What a tuning trial pays besides inference: sending its new model, and the measure request itself.
            out[f"per candidate, new {label} model (ms)"].append(1000 * upload_s + rtt_ms)
            t0 = time.perf_counter()
            session.put_model(data)
            out[f"re-send {label}, already cached (ms)"].append(1000 * (time.perf_counter() - t0))
        session.close()
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-wifi", action="store_true", help="skip the emulated Wi-Fi link")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {
            label: [
                dense_onnx(root / f"m{label[:-3]}-{rep}.onnx", size, seed=rep).read_bytes() for rep in range(args.reps)
            ]
            for label, size in SIZES.items()
        }
        server = start_sshd(root / "sshd")
        proxy = TcpProxy(("127.0.0.1", server.port), delay_s=0.005, rate_bytes_s=2.5e6)
        try:

            def local(folder: Path) -> DeviceProfile:
                return DeviceProfile(name="local", transport="local", cache_dir=str(folder / "cache"))

            def ssh(folder: Path) -> DeviceProfile:
                return resolve_device(str(trusted_device(server, folder)))

            def wifi(folder: Path) -> DeviceProfile:
                path = trusted_device(server, folder)
                path.write_text(path.read_text().replace(f"port = {server.port}", f"port = {proxy.port}"))
                (folder / "known_hosts").write_text(
                    server.known_hosts_line().replace(f":{server.port} ", f":{proxy.port} ")
                )
                return resolve_device(str(path))

            links = {"local": local, "SSH loopback": ssh}
            if not args.no_wifi:
                links["SSH, emulated Wi-Fi (10 ms RTT, 20 Mbit/s)"] = wifi
            results = {}
            for name, make in links.items():
                print(f"measuring {name} ...", file=sys.stderr)
                results[name] = measure_link(make, models, args.reps, root / name.split(",")[0].replace(" ", "-"))
        finally:
            proxy.close()
            server.stop()
    metrics = list(dict.fromkeys(key for r in results.values() for key in r))
    print(f"| ({args.reps} reps, median [min-max]) | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for metric in metrics:
        cells = []
        for values in (r.get(metric) for r in results.values()):
            cells.append(
                f"{_fmt(statistics.median(values))} [{_fmt(min(values))}-{_fmt(max(values))}]" if values else "-"
            )
        print(f"| {metric} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
