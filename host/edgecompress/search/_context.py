"""The run context: what every phase and trial of a tune run shares, settled once after the device's hello."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from edgecompress.artifact import Artifact
from edgecompress.budgets import Budget
from edgecompress.compress import CompressionPlan, SearchSpace, search_space
from edgecompress.compress._export import INPUT_NAME
from edgecompress.config import DeviceProfile, TuneConfig
from edgecompress.device import MeasureRequest, measure_request
from edgecompress.search._candidate import Candidate, build_candidate
from edgecompress.search._decide import make_sampler, round_count
from edgecompress.search._negotiate import ExportTarget
from edgecompress.verdict import WindowPlan
from edgecompress.workload import Workload

# A study shared by several hosts: each beats for its trials in flight every HEARTBEAT_S; a RUNNING trial whose last
# beat is older than HEARTBEAT_GRACE_S is stale (its host was killed) and is failed and queued again.
HEARTBEAT_S = 5
HEARTBEAT_GRACE_S = 30


def heartbeat_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage that keeps trial heartbeats (an Optuna feature still marked experimental: not warned about)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=HEARTBEAT_GRACE_S)


# Above this many prunable groups, the space gets one ratio per stage (a few trials per round cannot learn 30).
COARSEN_ABOVE_GROUPS = 12


def tune_measure_request(profile: DeviceProfile, config: TuneConfig, input_shape: tuple[int, ...]) -> MeasureRequest:
    """How a tune run measures every model: the profile's defaults, its runs, window and warm-up, ``batch`` inputs a
    call."""
    shapes = {INPUT_NAME: (config.batch, *input_shape[1:])} if config.batch > 1 else None
    return measure_request(
        profile,
        runs=config.runs,
        min_seconds=config.min_seconds,
        warmup_seconds=config.warmup_seconds,
        input_shapes=shapes,
    )


@dataclass(frozen=True)
class RunContext:
    """Settings, device, export target and workload of one run. ``target.quant_modes`` holds the formats the
    search samples: after the probe, only those kept (``keeping``)."""

    config: TuneConfig
    profile: DeviceProfile
    budgets: tuple[Budget, ...]
    workload: Workload
    target: ExportTarget
    run_dir: Path
    storage: str
    name: str
    original: Artifact | None = None  # the original's artifact, once measured: relative budgets pair with it
    host_device: str = "cpu"  # the torch device of host compute (resolved from config.host_device)
    device_spec: str = ""  # how `check` names the device (one member of a pool); default: config.device

    @property
    def relative_keys(self) -> frozenset[str]:
        """The device budgets relative to the original: judged on the paired ratio, never on an earlier L0."""
        return frozenset(b.key for b in self.device_budgets if b.relative is not None)

    @property
    def windows(self) -> WindowPlan:
        """How a candidate is judged during the search."""
        c = self.config
        return WindowPlan(c.confidence, min(c.min_windows, c.max_windows), c.max_windows)

    @property
    def confirm_windows(self) -> WindowPlan:
        """How the final answer (and a round's base) is judged: the same confidence, more windows allowed."""
        c = self.config
        return WindowPlan(c.confidence, min(c.min_windows, c.confirm_windows), max(c.max_windows, c.confirm_windows))

    def judged(self, thresholds: dict[str, float], original_values: dict[str, float | None]) -> dict[str, float]:
        """Thresholds as the verdict judges them: a relative budget's as a ratio to the original (c_t / L0, which is
        the cooling schedule run from 1 to the budget's factor), the others as they are."""
        result = dict(thresholds)
        for key in self.relative_keys:
            base = original_values.get(key)
            if key in result and base:
                result[key] = result[key] / float(base)
        return result

    @property
    def rounds(self) -> int:
        return round_count(self.config)

    @cached_property
    def optuna_storage(self) -> str | optuna.storages.BaseStorage:
        """The studies' storage: a shared one (other hosts may join) with heartbeats for stale-trial expiry."""
        if not self.config.shared:
            return self.storage
        return heartbeat_storage(self.storage)

    @cached_property
    def request(self) -> MeasureRequest:
        return tune_measure_request(self.profile, self.config, self.workload.input_shape)

    @property
    def device_budgets(self) -> tuple[Budget, ...]:
        return tuple(b for b in self.budgets if not b.spec.on_host)

    def keeping(self, quant_modes: tuple[str, ...], original: Artifact) -> RunContext:
        """The context of the search: only the formats the probe kept, and the original to pair with."""
        target = dataclasses.replace(self.target, quant_modes=quant_modes)
        return dataclasses.replace(self, target=target, original=original)

    def space(self, model: nn.Module) -> SearchSpace:
        """The model's pruning space, coarsened to stages when asked or when it has many groups."""
        space = search_space(model, self.workload.input_shape, self.workload.ignore)
        coarse = self.config.coarsen == "yes" or (
            self.config.coarsen == "auto" and len(space.groups) > COARSEN_ABOVE_GROUPS
        )
        if not coarse:
            return space
        return search_space(model, self.workload.input_shape, self.workload.ignore, coarsen=True)

    def build(
        self, base: nn.Module, plan: CompressionPlan, space: SearchSpace, **options: Any
    ) -> tuple[nn.Module, Candidate]:
        """build_candidate with this run's workload, export target and validation limit."""
        return build_candidate(
            base,
            plan,
            self.workload,
            space,
            self.target.opset,
            self.config.val_limit,
            format=self.target.format,
            device=self.host_device,
            **options,
        )

    def study(self, t: int) -> optuna.Study:
        """Round t's study (created on first use): its own threshold, its own seeded sampler."""
        study = optuna.create_study(
            study_name=f"{self.name}/round-{t}",
            storage=self.optuna_storage,
            sampler=make_sampler(self.config, t),
            direction="maximize",
            load_if_exists=True,
        )
        finished = len(study.get_trials(deepcopy=False))
        if finished:
            study.sampler = make_sampler(self.config, t, finished)
        return study
