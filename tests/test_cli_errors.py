"""User mistakes on the command line: exit 2 and one line that names the file and says what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirun import edgecompress, edgecompress_heavy_imports


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


def test_bench_on_a_directory_says_it_is_a_directory(tmp_path: Path, env: dict[str, str]):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    result = edgecompress("bench", str(folder), env=env)
    assert result.returncode == 2, result.stderr
    assert f"{folder} is a directory" in result.stderr and "does not exist" not in result.stderr


def test_brackets_in_messages_and_tables_are_printed_not_read_as_markup(tmp_path: Path, env: dict[str, str]):
    profile = tmp_path / "bad.toml"
    profile.write_text('name = "bad"\ntransport = "ssh"\n')
    result = edgecompress("devices", "info", str(profile), env=env)
    assert result.returncode == 2 and "needs an [ssh] table" in result.stderr, result.stderr
    # This machine has no power rails: the check's fix names the profile's [power] table.
    check = edgecompress("devices", "check", "local", env=dict(env, COLUMNS="400"))
    assert "[power] command" in check.stdout, check.stdout


@pytest.mark.parametrize(
    ("command", "words"),
    [(["tune"], ["[tune]", "[budgets]", "user@host[:port]"]), (["check"], ["[check]", "[budgets]"])],
)
def test_help_texts_show_their_brackets(command: list[str], words: list[str], env: dict[str, str]):
    result, imported = edgecompress_heavy_imports(*command, "--help", env=dict(env, COLUMNS="400"))
    assert result.returncode == 0, result.stderr
    for word in words:
        assert word in result.stdout and "\\" + word not in result.stdout, (word, result.stdout)
    # Help is answered in about a second: none of torch, scipy, onnx, onnxruntime, optuna is imported for it.
    assert not imported, imported


def test_the_dashboard_install_hint_is_the_readmes(tmp_path: Path, env: dict[str, str]):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.json").write_text('{"config": {}}')
    (run_dir / "study.sqlite3").write_bytes(b"")
    code = (
        "import sys; sys.modules['optuna_dashboard'] = None; "  # unimportable here, as without the extra
        f"sys.argv = ['edgecompress', 'dashboard', {str(run_dir)!r}]; from edgecompress.cli import main; main()"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    hint = "pip install 'edgecompress[dashboard]'"
    assert hint in done.stderr and hint in " ".join(readme.split()), done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["bench", "m.onnx", "--runs", "x"], "Invalid value for '--runs'"), (["bench"], "Missing argument")],
)
def test_a_bad_flag_is_a_usage_error_not_an_internal_one(args: list[str], message: str, env: dict[str, str]):
    result, imported = edgecompress_heavy_imports(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "internal error" not in result.stderr
    assert not imported, imported
