"""User mistakes on the command line: exit 2 and one line that names the file and says what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirun import edgecompress


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))


@pytest.mark.parametrize("text", ["{}", "[]"])
def test_resume_from_a_state_that_is_no_run_state_names_the_file(tmp_path: Path, env: dict[str, str], text: str):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.json").write_text(text)
    result = edgecompress("tune", "--resume", str(run_dir), env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert str(run_dir / "state.json") in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
