"""Device time only where it can change the answer: a candidate that cannot beat the round's best (or that the run's
latency model predicts infeasible) is told without a measurement, and does not count towards the round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
from clirun import quick_tune_config
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from edgecompress.search import _decide as decide


def _trial(number: int, accuracy: float, feasible: bool, **attrs: object) -> optuna.trial.FrozenTrial:
    trial = create_trial(
        params={"r": 0.1 * number},
        distributions={"r": FloatDistribution(0, 1)},
        value=accuracy,
        user_attrs={"candidate": {"accuracy": accuracy}, "feasible": feasible, **attrs},
        state=TrialState.COMPLETE,
    )
    trial.number = number
    return trial


def test_a_screened_trial_does_not_count_and_best_accuracy_ranks_measured_feasible_ones() -> None:
    trials = [
        _trial(0, 0.95, True),
        _trial(1, 0.90, True),
        _trial(2, 0.99, False, screened="cannot beat the round's best: ..."),
        _trial(3, 0.93, True),
        _trial(4, 0.93, True, duplicate_of=3),
    ]
    assert [t.number for t in decide.counted(trials)] == [0, 1, 3, 4]
    assert decide.best_accuracy(trials) == 0.95
    assert decide.best_accuracy(trials, rank=2) == 0.93
    assert decide.best_accuracy(trials, rank=3) == 0.90  # the duplicate is not a plan of its own
    assert decide.best_accuracy(trials, rank=4) is None


def test_a_run_measures_only_candidates_that_can_beat_the_rounds_best(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200")
    # A loose budget: the identity plan (first, the most accurate) meets it, so no pruned candidate of the first
    # round can beat it (in the last round the rule keeps the final answer's fallbacks measurable: 3 feasible first).
    args = ["--example", "digits", "--budget", "latency.p50<=3x", "--rounds", "2", "--trials-per-round", "3"]
    quick = ["--runs", "20", "--min-seconds", "0", "--finetune-steps", "0", "--val-limit", "200", "--no-quant-probe"]
    quick += ["--warmup-seconds", "0.05"]
    quick += ["--drift-wait", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "edgecompress", "tune", *args, *quick, "--no-validate", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((out / "results.json").read_text())
    trials = [t for t in results["trials"] if t["state"] == "COMPLETE"]
    screened = [t for t in trials if t["screened"]]
    measured = [t for t in trials if not t["screened"]]
    assert [len([t for t in measured if t["round"] == r]) for r in (0, 1)] == [3, 3]  # measured trials count
    assert screened, "no candidate was screened"
    original = results["base"]["candidate"]["accuracy"]
    for trial in screened:
        assert trial["screened"].startswith("cannot beat the round's best")
        assert trial["latency"] is None and trial["member"] is None  # no device time
        assert trial["feasible"] is False
        assert trial["accuracy"] < original
    assert results["screening"]["measurements_saved"] == len(screened)
    model = results["screening"]["models"]["latency.p50"]
    assert model["n"] == len([t for t in measured if t["decisions"]])  # it learnt every measurement
    assert "not measured:" in result.stdout
    assert results["final"]["met"] is True


def test_plans_that_build_the_same_bytes_are_measured_once(tmp_path: Path, monkeypatch) -> None:
    from edgecompress.search import run_tune

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # Channels kept in multiples of 64 on a network of at most 64 channels: every sampled plan keeps every channel, so
    # the sampler's differing ratios are one model, measured once (else one model gets several verdicts).
    config = quick_tune_config(
        budgets=["latency.p50<=3x"], trials_per_round=4, round_to=64, finetune_steps=0, min_seconds=0.0, drift_wait_s=30
    )
    run_tune(config, tmp_path / "run")
    trials = json.loads((tmp_path / "run" / "results.json").read_text())["trials"]
    assert len(trials) == 4 and all(t["state"] == "COMPLETE" for t in trials)
    # The identity plan exports the original as it is; every sampled plan builds one and the same pruned graph.
    identity, *sampled = trials
    assert len({t["candidate"]["sha256"] for t in sampled}) == 1
    assert len({json.dumps(t["plan"], sort_keys=True) for t in sampled}) > 1, "the plans should differ"
    first, *again = sampled
    assert identity["duplicate_of"] is None and first["duplicate_of"] is None and first["decisions"]
    for trial in again:
        assert trial["duplicate_of"] == first["number"]
        assert trial["values"] == first["values"] and trial["feasible"] == first["feasible"]
        assert trial["latency"] == first["latency"] and trial["latency"]["count"] >= 20  # the same model's
    log = (tmp_path / "run" / "tune.log").read_text()
    assert f"builds the same model as trial {first['number']}" in log
