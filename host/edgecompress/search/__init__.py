"""The annealed constrained search: cooling schedules and the rounds loop over Optuna studies."""

from edgecompress.search._rounds import Reporter, TuneResult, run_tune, tune_measure_request
from edgecompress.search._schedule import SCHEDULES, thresholds

__all__ = ["SCHEDULES", "Reporter", "TuneResult", "run_tune", "thresholds", "tune_measure_request"]
