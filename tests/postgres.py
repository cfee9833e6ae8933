"""A throwaway PostgreSQL server for the multi-host tests: Debian's postgresql binaries, a fresh cluster in a
temporary folder (initdb, pg_ctl; as the ``postgres`` user when the tests run as root), listening on a Unix socket in
that folder only. Stopped and removed at the end."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
    for folder in reversed(versions):
        if (folder / name).is_file():
            return str(folder / name)
    return None


@dataclass
class PostgresServer:
    root: Path
    socket_dir: Path
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.user}@/{database}?host={self.socket_dir}"


def _as_owner(user: str | None, command: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *command] if user else command


def start_postgres(root: Path) -> PostgresServer:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run installs it)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("psycopg2 is not installed: pip install -e '.[dev]'")
    owner = "postgres" if os.geteuid() == 0 else None
    user = owner or pwd.getpwuid(os.geteuid()).pw_name
    root.mkdir(parents=True, exist_ok=True)
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if owner:
        # The server refuses to run as root; its folders belong to the postgres user.
        record = pwd.getpwnam(owner)
        root.chmod(0o755)
        for path in (root, sockets):
            os.chown(path, record.pw_uid, record.pw_gid)
        for parent in root.parents:  # the user must be able to reach the folder
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
    subprocess.run(
        _as_owner(owner, [initdb, "-D", str(data), "-A", "trust", "-U", user, "--no-sync"]),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses='' -c unix_socket_directories={sockets} -c fsync=off -c max_connections=200"
    subprocess.run(
        _as_owner(owner, [pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    return PostgresServer(root, sockets, user)


def stop_postgres(server: PostgresServer) -> None:
    pg_ctl = _bin("pg_ctl")
    owner = "postgres" if os.geteuid() == 0 else None
    subprocess.run(
        _as_owner(owner, [str(pg_ctl), "-D", str(server.root / "data"), "-m", "immediate", "stop"]),
        capture_output=True,
    )


def serve_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """Body of a module's ``postgres`` fixture."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    stop_postgres(server)
