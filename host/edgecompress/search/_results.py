"""results.json: every trial of every round with what was measured and decided, for reports and for people."""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from edgecompress import __version__
from edgecompress.budgets import Budget
from edgecompress.report import library_versions
from edgecompress.search._state import RESULTS_FILE, RunState, save_json


def trial_record(round_index: int, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    observation = attrs.get("observation") or {}
    return {
        "round": round_index,
        "number": trial.number,
        "state": trial.state.name,
        "thresholds": attrs.get("thresholds"),
        "plan": attrs.get("plan"),
        "accuracy": attrs.get("candidate", {}).get("accuracy"),
        "objective": trial.value,
        "values": attrs.get("values"),
        "constraints": trial.constraints,
        "decisions": attrs.get("decisions"),
        "feasible": attrs.get("feasible"),
        "candidate": attrs.get("candidate"),
        "latency": observation.get("latency"),
        "observation": {k: v for k, v in observation.items() if k != "measurement"} or None,
        "timings": attrs.get("timings"),
        "member": attrs.get("member"),
        "worker": attrs.get("worker"),
        "duplicate_of": attrs.get("duplicate_of"),
        "screened": attrs.get("screened"),
        "contender": attrs.get("contender"),
        "predicted": attrs.get("predicted"),
        "fail_reason": attrs.get("fail_reason"),
        "duration_s": trial.duration.total_seconds() if trial.duration else None,
    }


def write_results(state: RunState, budgets: list[Budget], storage: str, name: str, rounds: int) -> None:
    """Write results.json from the run state and the round studies in ``storage``."""
    trials = []
    for t in range(rounds):
        try:
            study = optuna.load_study(study_name=f"{name}/round-{t}", storage=storage)
        except KeyError:
            break
        records = [trial_record(t, tr) for tr in study.get_trials(deepcopy=False)]
        by_number = {r["number"]: r for r in records}
        for record in records:
            source = by_number.get(record["duplicate_of"]) if record["duplicate_of"] is not None else None
            if source is not None and record["latency"] is None:
                record["latency"] = source["latency"]  # the same model's: its raw observation stays with the source
        trials += records
    results = {
        "edgecompress": __version__,
        "started_unix": state.created_unix,
        "finished_unix": time.time(),
        "command": state.command,
        "config": state.config,
        "device": state.device,
        "budgets": [b.to_json() for b in budgets],
        "base": state.original or {},  # with the original's observation: reports compare raw latencies
        "host": library_versions(),
        "rounds": state.rounds,
        "drift": state.drift,
        "final": state.final,
        "screening": state.screening,
        "trials": trials,
    }
    save_json(state.run_dir / RESULTS_FILE, results)
