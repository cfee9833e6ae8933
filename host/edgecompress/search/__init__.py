"""The annealed constrained search: cooling schedules, the run driver, its phases and the trial pipeline."""

from edgecompress.search._candidate import Candidate, build_candidate, measure_candidate
from edgecompress.search._context import tune_measure_request
from edgecompress.search._driver import TuneResult, run_tune
from edgecompress.search._progress import Reporter
from edgecompress.search._schedule import SCHEDULES, thresholds
from edgecompress.search._worker import WorkerResult, run_worker

__all__ = [
    "SCHEDULES",
    "Candidate",
    "Reporter",
    "TuneResult",
    "WorkerResult",
    "build_candidate",
    "measure_candidate",
    "run_tune",
    "run_worker",
    "thresholds",
    "tune_measure_request",
]
