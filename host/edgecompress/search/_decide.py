"""The search's decisions, as pure functions of the run's settings and its trials: no device, no files, no model.

Each is unit-tested on hand-made trials (tests/test_search_decisions.py); the driver and the trial pipeline only
call them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from edgecompress import verdict
from edgecompress.budgets import REFERENCE_ACCURACY, Budget
from edgecompress.compress import CompressionPlan, SearchSpace
from edgecompress.compress._space import Quant
from edgecompress.config import TuneConfig
from edgecompress.errors import ConfigError
from edgecompress.search._schedule import thresholds as cooling

INTERRUPTED = "interrupted"
# Besides the fine-tuned base and its trial, how many more of the last round's feasible trials the final
# confirmation may try (each costs a confirmation's windows on the device).
FINAL_ALTERNATIVES = 2
# The fail reason of a trial whose device went away: its plan is queued again and the trial does not count.
DEVICE_UNAVAILABLE = "device unavailable"
# Trials of a study shared by several hosts that do not count either: one whose host stopped beating (killed), and
# one asked by two hosts at once for the round's last place (the later gives way). Both plans are queued again.
STALE = "stale: its host stopped keeping its heartbeat"
SURPLUS = "surplus: the round's trials were all taken"
NOT_COUNTED = (INTERRUPTED, DEVICE_UNAVAILABLE, STALE, SURPLUS)
# A format must be more than 10% slower than fp32 on every device budget to be left out of the search.
QUANT_PROBE_MARGIN = 0.10


RESUME_SEED_STEP = 7919  # a prime: seeds of resumed studies never meet another round's (t < 1000)


def duplicate_of(params: Mapping[str, Any], trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """A complete trial that evaluated exactly these parameters already (its result holds for them too)."""
    return next((tr for tr in trials if tr.state == TrialState.COMPLETE and tr.params == dict(params)), None)


def same_model(sha256: str, trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """A complete trial whose plan built these very bytes (plans whose ratios round to the same channel counts do):
    the model was evaluated already, and a second measurement of it would only add a second opinion on one model."""
    return next(
        (
            tr
            for tr in trials
            if tr.state == TrialState.COMPLETE
            and "duplicate_of" not in tr.user_attrs
            and (tr.user_attrs.get("candidate") or {}).get("sha256") == sha256
        ),
        None,
    )


def round_count(config: TuneConfig) -> int:
    """How many rounds a run has: one for one-step cooling and for the single-round baselines."""
    if config.schedule == "one-step" or config.strategy in ("unconstrained", "uniform"):
        return 1
    return config.rounds


def make_sampler(config: TuneConfig, t: int, finished: int = 0) -> optuna.samplers.BaseSampler:
    """Round t's sampler, seeded per round so a run is repeatable. ``finished``: the trials the round's study holds
    already (a resumed run): the seed moves on with them, or a resumed sampler would restart its random stream and
    propose the plans it proposed before the interruption again."""
    seed = config.seed * 1000 + t + RESUME_SEED_STEP * finished
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: a trial still being measured counts as a poor one, so candidates asked while others are in
    # flight spread out (off by default in Optuna 4.x, and without effect when one trial runs at a time).
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, config.trials_per_round), constant_liar=True)


def sample_plan(
    trial: optuna.Trial, space: SearchSpace, config: TuneConfig, quant_modes: Sequence[str]
) -> CompressionPlan:
    """The plan a trial proposes: a pruning ratio per dimension of the space and a numeric format."""
    ratios = {
        dim: trial.suggest_float(f"ratio:{dim}", 0.0, config.max_ratio, step=config.ratio_step)
        for dim in space.dimensions
    }
    quant = trial.suggest_categorical("quant", list(quant_modes))
    return CompressionPlan(
        ratios={k: v for k, v in ratios.items() if v > 0}, quant=cast(Quant, quant), round_to=config.round_to
    )


def identity_params(space: SearchSpace, quant_modes: Sequence[str]) -> dict[str, Any]:
    """The parameters of the unchanged model (fp32 where searched): every round's first trial."""
    quant = "fp32" if "fp32" in quant_modes else quant_modes[0]
    return {**{f"ratio:{d}": 0.0 for d in space.dimensions}, "quant": quant}


def uniform_params(space: SearchSpace, ratio: float, quant_modes: Sequence[str]) -> dict[str, Any]:
    """One global ratio for every dimension, in the first searched format (the uniform baseline's trial)."""
    return {**{f"ratio:{d}": ratio for d in space.dimensions}, "quant": quant_modes[0]}


def _global_ratio(trial: FrozenTrial) -> float:
    return max((v for k, v in trial.params.items() if k.startswith("ratio:")), default=0.0)


class UniformSearch:
    """Binary search for the smallest global ratio whose uniform plan is feasible (the paper's uniform baseline)."""

    def __init__(self, max_ratio: float, step: float):
        self.max_ratio = max_ratio
        self.step = step

    @staticmethod
    def tried(finished: Sequence[FrozenTrial]) -> set[float]:
        return {_global_ratio(tr) for tr in finished}

    def next_ratio(self, finished: Sequence[FrozenTrial]) -> float:
        low, high = 0.0, self.max_ratio
        for tr in finished:
            ratio = _global_ratio(tr)
            if tr.state == TrialState.COMPLETE and tr.user_attrs.get("feasible"):
                high = min(high, ratio)
            else:
                low = max(low, ratio)
        middle = (low + high) / 2
        return min(self.max_ratio, round(round(middle / self.step) * self.step, 6))


def counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward a round's number: complete and measured (a trial the latency model screened
    costs no device time and does not count), or failed through the candidate's own fault (not interrupted, not
    lost to a device that went away: those plans are queued again)."""

    def candidates_fault(reason: str) -> bool:
        return not reason.startswith(NOT_COUNTED)

    return [
        tr
        for tr in trials
        if (tr.state == TrialState.COMPLETE and not tr.user_attrs.get("screened"))
        or (tr.state == TrialState.FAIL and candidates_fault(str(tr.user_attrs.get("fail_reason"))))
    ]


def interrupted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials left RUNNING by a run that was killed: to be failed as interrupted and their parameters queued."""
    return [tr for tr in trials if tr.state == TrialState.RUNNING]


def _accuracy(trial: FrozenTrial) -> float:
    return float(trial.user_attrs["candidate"]["accuracy"])


def best_accuracy(trials: Sequence[FrozenTrial], rank: int = 1) -> float | None:
    """The highest accuracy among the complete, feasible trials (None before the first); with ``rank`` k, the k-th
    highest of distinct plans (None while fewer than k)."""
    feasible = sorted(
        (
            tr.user_attrs.get("candidate", {}).get("accuracy")
            for tr in trials
            if tr.state == TrialState.COMPLETE and tr.user_attrs.get("feasible") and "duplicate_of" not in tr.user_attrs
        ),
        reverse=True,
    )
    return feasible[rank - 1] if len(feasible) >= rank else None


def contender(accuracy: float, trials: Sequence[FrozenTrial]) -> bool:
    """Whether a candidate would become the round's choice if the device showed it feasible: more accurate than every
    feasible trial so far. Such a candidate is measured with the confirmation's windows when the search's do not
    decide it (one right at its threshold on a noisy device stays inconclusive after 6, and an inconclusive one is
    infeasible to the search): device time where it can change the answer."""
    best = best_accuracy(trials)
    return best is None or accuracy > best


def select(trials: Sequence[FrozenTrial], thresholds: Mapping[str, float]) -> tuple[FrozenTrial | None, bool]:
    """A round's choice: the best feasible trial (highest accuracy, ties to the lower load on the budgets), else the
    least violating measured one; with whether it was feasible. None when no trial completed."""
    complete = [tr for tr in trials if tr.state == TrialState.COMPLETE and "candidate" in tr.user_attrs]
    if not complete:
        return None, False
    feasible = [tr for tr in complete if tr.user_attrs.get("feasible")]
    if feasible:
        return max(
            feasible, key=lambda tr: (_accuracy(tr), -verdict.load(tr.user_attrs.get("values", {}), thresholds))
        ), True
    measured = [tr for tr in complete if "observation" in tr.user_attrs] or complete
    chosen = min(
        measured,
        key=lambda tr: (verdict.relative_violation(tr.user_attrs.get("values", {}), thresholds), -_accuracy(tr)),
    )
    return chosen, False


def objective(
    config: TuneConfig,
    budgets: Sequence[Budget],
    accuracy: float,
    values: Mapping[str, float | None],
    original_values: Mapping[str, float | None],
) -> float:
    """What the sampler maximises: the accuracy, or for the unconstrained baseline the paper's trade-off
    100 acc + lambda (L0 - latency) on the first device budget."""
    if config.strategy != "unconstrained":
        return accuracy
    device_budget = next((b for b in budgets if not b.spec.on_host), budgets[0])
    base = float(original_values[device_budget.key] or 0.0)
    value = values.get(device_budget.key)
    return 100 * accuracy + config.tradeoff_lambda * (base - (value if value is not None else base))


def median_values(samples: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per metric, the median of the values measured (metrics a measurement did not report are left out of it)."""
    keys = {k for sample in samples for k in sample}
    result: dict[str, float | None] = {}
    for key in keys:
        present = sorted(float(v) for sample in samples if (v := sample.get(key)) is not None)
        result[key] = statistics.median(present) if present else None
    return result


def closest_to(samples: Sequence[Mapping[str, float | None]], center: Mapping[str, float | None]) -> int:
    """The index of the sample whose p50 latency is closest to ``center``'s: the one measurement kept as raw data."""

    def p50(values: Mapping[str, float | None]) -> float:
        return float(values.get("latency.p50") or 0.0)

    return min(range(len(samples)), key=lambda i: abs(p50(samples[i]) - p50(center)))


def cooling_plan(
    budgets: Sequence[Budget], original: Mapping[str, float | None], config: TuneConfig
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Every budget's absolute target C (relative ones on the original's value L0) and its threshold per round.

    An accuracy floor is not cooled: it holds at C from the first round. It is the user's hard requirement, not a
    device figure the search walks down to; the original meets it by definition (its drop is 0), so a cooled floor
    would start at C anyway, and a looser early floor would let a round keep a collapsed base that later rounds,
    which only prune further, cannot bring back. Its relative form (``<=1%``) is a percent of the original's
    accuracy, which ``original`` holds under REFERENCE_ACCURACY.
    """
    rounds = round_count(config)
    kind = "one-step" if rounds == 1 else config.schedule
    targets: dict[str, float] = {}
    schedule: dict[str, list[float]] = {}
    for b in budgets:
        if b.spec.requires == "accuracy":
            reference = original.get(REFERENCE_ACCURACY)
            if reference is None:
                raise ConfigError(f"budget {b.text!r}: the original model's accuracy is unknown")
            targets[b.key] = b.target(100.0 * float(reference))
            schedule[b.key] = [targets[b.key]] * rounds
            continue
        targets[b.key] = b.target(original.get(b.key))
        base_value = original.get(b.key)
        if base_value is None:
            raise ConfigError(f"the device did not report {b.key} for the original model")
        schedule[b.key] = cooling(float(base_value), targets[b.key], rounds, kind, config.alpha)
    return targets, schedule


def formats_to_drop(ratios: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """The formats measured slower than fp32 by more than QUANT_PROBE_MARGIN on every device budget."""
    return [mode for mode, ratio in ratios.items() if verdict.slower_on_every(ratio, QUANT_PROBE_MARGIN)]


def drift(
    values: Mapping[str, float | None], reference: Mapping[str, float | None], keys: Sequence[str]
) -> dict[str, float]:
    """The relative change of each device budget's value since the reference measurement of the original."""
    ratio = verdict.ratios(values, reference, keys)
    return {k: r - 1 for k, r in ratio.items() if r is not None}


def composed_plan(original: SearchSpace, final: SearchSpace, last: CompressionPlan) -> CompressionPlan:
    """The plan that rebuilds the final model's channel counts from the original in one step: the rounds' plans
    composed. Each round prunes its own base, so the last round's plan alone is relative to a pruned model.

    ``final`` is the final model's space (its groups keep their names through pruning); round_to is 1 because the
    counts are exact already, and the format and float fallback are the last round's.
    """
    kept = {g.name: g.channels for g in final.groups}
    ratios = {}
    for group in original.groups:
        channels = kept.get(group.name, group.channels)
        if channels < group.channels:
            ratios[group.name] = 1.0 - channels / group.channels
    return CompressionPlan(ratios=ratios, quant=last.quant, float_fallback=last.float_fallback, round_to=1)


def alternatives(trials: Sequence[FrozenTrial], chosen: int, count: int) -> list[FrozenTrial]:
    """The round's other feasible, evaluated trials, most accurate first (distinct plans, not the chosen one)."""
    feasible = [
        tr
        for tr in trials
        if tr.state == TrialState.COMPLETE
        and tr.user_attrs.get("feasible")
        and tr.number != chosen
        and "duplicate_of" not in tr.user_attrs
        and "candidate" in tr.user_attrs
    ]
    return sorted(feasible, key=lambda tr: -_accuracy(tr))[:count]


# Slack buys accuracy: when the round's most accurate feasible trial sits this far under every threshold, a less
# pruned plan between it and the round's base is tried, aimed MARGIN under the threshold; at most REFINEMENTS a round.
SLACK = 0.15
MARGIN = 0.05
REFINEMENTS = 2


def _is_identity(trial: FrozenTrial) -> bool:
    return all(v == 0 for k, v in trial.params.items() if k.startswith("ratio:"))


def toward_boundary(
    trials: Sequence[FrozenTrial], judged: Mapping[str, float], step: float
) -> tuple[dict[str, Any], int] | None:
    """Parameters of a less pruned plan on the line from the round's most accurate feasible trial to the round's
    base (its identity trial, in the same format), aimed MARGIN under the threshold, and the trial it refines; None
    when that trial has no SLACK on some device budget, when the base already meets the thresholds, or when the plan
    was tried. ``judged``: the device thresholds as the verdict judges them (ratios for relative budgets), which
    is what the trials' decisions hold.

    Along that line a budget's value is taken as linear in the scale of the ratios (measured at both ends); each
    budget asks for a scale, the largest wins, and the ratios are rounded up to the step (more pruning, not less).
    """
    measured = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.user_attrs.get("decisions")
        and not t.user_attrs.get("screened")
        and "duplicate_of" not in t.user_attrs
    ]
    feasible = [t for t in measured if t.user_attrs.get("feasible") and not _is_identity(t)]
    if not feasible:
        return None
    best = max(feasible, key=_accuracy)
    quant = best.params.get("quant")
    base = next((t for t in measured if _is_identity(t) and t.params.get("quant") == quant), None)
    if base is None or base.user_attrs.get("feasible"):
        return None
    scale = 0.0
    for key, threshold in judged.items():
        ours = (best.user_attrs["decisions"].get(key) or {}).get("value")
        theirs = (base.user_attrs["decisions"].get(key) or {}).get("value")
        if ours is None or theirs is None:
            return None
        if ours > (1 - SLACK) * threshold:
            return None  # no slack on this budget: nothing to buy
        if theirs <= ours:
            continue  # pruning did not lower this one: it does not limit the scale
        scale = max(scale, (theirs - threshold * (1 - MARGIN)) / (theirs - ours))
    if not 0 < scale < 1:
        return None
    params = {
        k: (min(v, math.ceil(round(v * scale / step, 6)) * step) if k.startswith("ratio:") else v)
        for k, v in best.params.items()
    }
    params = {k: round(v, 10) if isinstance(v, float) else v for k, v in params.items()}
    if params == best.params or any(t.params == params for t in trials):
        return None
    return params, best.number
