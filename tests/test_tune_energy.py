"""Energy and tail budgets as tune constraints: a fixture power source (Orin Nano INA3221 hwmon layout) on the local
agent drives the search; an energy budget on a device without a power source is refused before any search."""

from __future__ import annotations

import json
import os

import pytest
from clirun import edgecompress
from hw_fixtures import ORIN_NANO_W, orin_nano_jp6

QUICK = [
    "--runs",
    "30",
    "--min-seconds",
    "0.05",
    "--finetune-steps",
    "10",
    "--val-limit",
    "200",
    "--warmup-seconds",
    "0.05",
]


@pytest.fixture()
def env(tmp_path):
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="160")


def test_an_energy_budget_drives_a_search_on_a_fixture_power_source(tmp_path, env):
    root = orin_nano_jp6(tmp_path / "sys")
    profile = tmp_path / "orin.toml"
    profile.write_text(
        f'name = "fixture-orin"\ntransport = "local"\nsysfs_root = "{root}"\n'
        f'cache_dir = "{tmp_path / "agent-cache"}"\n[power]\nidle_seconds = 0.05\n'
    )
    out = tmp_path / "run"
    result = edgecompress(
        "tune", "--example", "digits", "--device", str(profile), "--budget", "energy<=0.9x",
        "--rounds", "1", "--trials-per-round", "3", "--no-screen", *QUICK, "--out", str(out), env=env,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    results = json.loads((out / "results.json").read_text())
    base = results["base"]
    assert base["values"]["power.mean"] == pytest.approx(ORIN_NANO_W)
    # Constant 6 W: energy per inference is 6 W x the mean time per inference (W x ms = mJ).
    assert base["values"]["energy"] == pytest.approx(ORIN_NANO_W * base["values"]["latency.mean"], rel=0.35)
    assert base["targets"]["energy"] == pytest.approx(0.9 * base["values"]["energy"])
    measured = [t for t in results["trials"] if t["state"] == "COMPLETE"]
    assert len(measured) == 3
    for trial in measured:
        assert set(trial["constraints"]) == {"energy"}
        # A relative budget is judged on the paired ratio to the original: the constraint is its upper bound minus
        # the round's threshold as a ratio.
        decision = trial["decisions"]["energy"]
        assert decision["paired"]
        assert trial["constraints"]["energy"] == pytest.approx(decision["upper"] - decision["threshold"])


def test_an_energy_budget_without_a_power_source_is_refused_before_the_search(tmp_path, env):
    bare = tmp_path / "bare.toml"
    (tmp_path / "empty-sys").mkdir()
    bare.write_text(f'name = "bare"\ntransport = "local"\nsysfs_root = "{tmp_path / "empty-sys"}"\n')
    result = edgecompress(
        "tune", "--example", "digits", "--device", str(bare), "--budget", "energy<=1mJ",
        "--out", str(tmp_path / "run"), env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "energy" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "study.sqlite3").exists()


def test_a_pwcet_budget_is_a_tune_constraint(tmp_path, env):
    out = tmp_path / "run"
    result = edgecompress(
        "tune", "--example", "digits", "--budget", "latency.pwcet@1e-6<=1.5x", "--rounds", "1",
        "--trials-per-round", "2", "--runs", "600", "--min-seconds", "0", "--finetune-steps", "0",
        "--val-limit", "200", "--out", str(out), env=env,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    results = json.loads((out / "results.json").read_text())
    key = "latency.pwcet@1e-06"
    assert results["base"]["values"][key] > 0
    for trial in results["trials"]:
        assert key in trial["constraints"]
        tail = trial["observation"]["tail"]
        assert tail["iid"] is not None or tail.get("method")
