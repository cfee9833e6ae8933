"""A noisy SSH device on this machine: an sshd on loopback inside a cgroup-v1 CPU quota (30% of one core by default),
so the agent it spawns runs ~3x slower with a heavy tail, like a loaded board. Started and stopped by the benchmark.

    with noisy_device(Path("bench-runs/noisy")) as profile:
        subprocess.run(["edgecompress", "bench", "model.onnx", "--device", str(profile)])
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from sshd import start_sshd, trusted_device  # noqa: E402  (the tests' real-sshd fixture)

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")


@contextmanager
def noisy_device(
    folder: Path, quota_us: int = 30_000, period_us: int = 100_000, name: str = "edgecompress-noisy"
) -> Iterator[Path]:
    """A device profile for an sshd whose every process (the agent included) shares ``quota_us`` of CPU time per
    ``period_us``; the cgroup is removed afterwards."""
    if not CGROUP_ROOT.is_dir():
        raise SystemExit(f"{CGROUP_ROOT} is missing: this harness needs the cgroup-v1 cpu controller (and root)")
    group = CGROUP_ROOT / name
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text(str(period_us))
    (group / "cpu.cfs_quota_us").write_text(str(quota_us))
    # The shell joins the cgroup, then becomes sshd: every session and agent it forks inherits the quota.
    wrapper = ("sh", "-c", f'echo $$ > {group / "cgroup.procs"} && exec "$@"', "sh")
    server = start_sshd(folder / "sshd", wrapper=wrapper)
    try:
        yield trusted_device(server, folder / "device")
    finally:
        server.stop()
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        try:
            group.rmdir()
        except OSError:
            pass
