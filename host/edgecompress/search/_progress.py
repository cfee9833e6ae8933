"""What a run tells the person watching it, and how it hears Ctrl-C."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import optuna

log = logging.getLogger("edgecompress.tune")


class Reporter(Protocol):
    """What the loop tells the person watching (the CLI prints it; tests may collect it)."""

    def message(self, text: str) -> None: ...

    def round_started(self, round_index: int, rounds: int, thresholds: dict[str, float], trials: int) -> None: ...

    def trial_finished(self, record: dict[str, Any], best: float | None, eta_s: float | None) -> None: ...


class LogReporter:
    def message(self, text: str) -> None:
        log.info(text)

    def round_started(self, round_index: int, rounds: int, thresholds: dict[str, float], trials: int) -> None:
        log.info("round %d/%d thresholds %s", round_index + 1, rounds, thresholds)

    def trial_finished(self, record: dict[str, Any], best: float | None, eta_s: float | None) -> None:
        log.info("trial %s", record.get("number"))


STOPPING = "stopping after the trial in flight (Ctrl-C again to stop now)"


class Logged:
    """A reporter that also writes everything it is told into the run's log (tune.log): the console's lines, each
    trial's outcome and the verdicts, so the log alone tells what the run did."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def message(self, text: str) -> None:
        log.info(text)
        self.reporter.message(text)

    def round_started(self, round_index: int, rounds: int, thresholds: dict[str, float], trials: int) -> None:
        log.info("round %d/%d: %d trials, thresholds %s", round_index + 1, rounds, trials, thresholds)
        self.reporter.round_started(round_index, rounds, thresholds, trials)

    def trial_finished(self, record: dict[str, Any], best: float | None, eta_s: float | None) -> None:
        if record.get("state") == "FAIL":
            log.info("trial %s failed: %s", record.get("number"), record.get("fail_reason"))
        else:
            log.info(
                "trial %s: accuracy %s, feasible %s, values %s, decisions %s",
                record.get("number"),
                record.get("accuracy"),
                record.get("feasible"),
                {k: record.get("values", {}).get(k) for k in record.get("thresholds", {})},
                {k: d.get("outcome") for k, d in (record.get("decisions") or {}).items()},
            )
        self.reporter.trial_finished(record, best, eta_s)


class StopFlag:
    """First Ctrl-C: finish the trial in flight, then stop. Second Ctrl-C: stop now (KeyboardInterrupt), which the
    driver turns into an interrupted run that still writes its results. ``notify`` tells the person watching."""

    def __init__(self, notify: Callable[[str], None] | None = None) -> None:
        self.requested = False
        self.notify = notify
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (tests driving the loop in a thread)
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(STOPPING)
        if self.notify is not None:
            self.notify(STOPPING)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@contextmanager
def run_log(folder: Path) -> Iterator[None]:
    """The run's own log (folder/tune.log) for edgecompress's and Optuna's lines during the block; the console shows
    the reporter's. Detached afterwards: a later run in the same process (a notebook, a benchmark) must not write
    into this run's log."""
    handler = logging.FileHandler(folder / "tune.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("edgecompress", "optuna"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("edgecompress").setLevel(logging.INFO)
    optuna.logging.disable_default_handler()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        yield
    finally:
        for name in ("edgecompress", "optuna"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
