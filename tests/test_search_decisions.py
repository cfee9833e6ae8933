"""The search's decisions without a device: sampler, plan, selection, objective, recovery, uniform search, the
original's median, the cooling plan, the format probe and drift. Trials are made with optuna.trial.create_trial."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FixedTrial, TrialState, create_trial
from torch import nn

from edgecompress.budgets import parse_budgets
from edgecompress.compress import search_space
from edgecompress.config import TuneConfig
from edgecompress.errors import ConfigError
from edgecompress.search import _decide as decide


def config(**changes) -> TuneConfig:
    return TuneConfig(example="digits", budgets=["latency.p50<=0.5x"], **changes)


def trial(
    accuracy: float | None = None,
    values: dict | None = None,
    feasible: bool | None = None,
    state: TrialState = TrialState.COMPLETE,
    ratio: float = 0.0,
    measured: bool = True,
    fail_reason: str | None = None,
    number: int = 0,
):
    attrs: dict = {}
    if accuracy is not None:
        attrs["candidate"] = {"accuracy": accuracy}
    if values is not None:
        attrs["values"] = values
    if feasible is not None:
        attrs["feasible"] = feasible
    if measured:
        attrs["observation"] = {}
    if fail_reason:
        attrs["fail_reason"] = fail_reason
    made = create_trial(
        state=state,
        value=accuracy if state == TrialState.COMPLETE else None,
        params={"ratio:g": ratio},
        distributions={"ratio:g": FloatDistribution(0.0, 0.8, step=0.05)},
        user_attrs=attrs,
    )
    made.number = number
    return made


@pytest.fixture(scope="module")
def space():
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.Flatten())
    return search_space(model, (1, 1, 8, 8))


def test_round_count():
    assert decide.round_count(config(rounds=4)) == 4
    assert decide.round_count(config(rounds=4, schedule="one-step")) == 1
    assert decide.round_count(config(rounds=4, strategy="uniform")) == 1
    assert decide.round_count(config(rounds=4, strategy="unconstrained")) == 1


def test_sampler_per_round_with_the_constant_liar():
    tpe = decide.make_sampler(config(seed=2, trials_per_round=3), 1)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._constant_liar is True and tpe._n_startup_trials == 3
    assert isinstance(decide.make_sampler(config(sampler="gp"), 0), optuna.samplers.GPSampler)
    assert isinstance(decide.make_sampler(config(sampler="random"), 0), optuna.samplers.RandomSampler)
    # Seeded per round: the same round proposes the same first plan, another round another one.
    first = [decide.make_sampler(config(sampler="random", seed=5), t) for t in (0, 0, 1)]
    drawn = []
    for sampler in first:
        study = optuna.create_study(sampler=sampler)
        drawn.append(study.ask().suggest_float("x", 0, 1))
    assert drawn[0] == drawn[1] != drawn[2]


def test_plan_from_a_trial_and_the_identity(space):
    params = {f"ratio:{d}": 0.0 for d in space.dimensions}
    params[f"ratio:{space.dimensions[0]}"] = 0.5
    params["quant"] = "int8"
    plan = decide.sample_plan(FixedTrial(params), space, config(round_to=4), ["fp32", "int8"])
    assert plan.ratios == {space.dimensions[0]: 0.5} and plan.quant == "int8" and plan.round_to == 4
    identity = decide.identity_params(space, ["fp32", "int8"])
    assert identity["quant"] == "fp32" and all(identity[f"ratio:{d}"] == 0.0 for d in space.dimensions)
    assert decide.identity_params(space, ["int8"])["quant"] == "int8"
    uniform = decide.uniform_params(space, 0.3, ["fp32"])
    assert {uniform[f"ratio:{d}"] for d in space.dimensions} == {0.3}


def test_selection_prefers_accuracy_among_feasible_then_the_lower_load():
    thresholds = {"latency.p50": 2.0}
    trials = [
        trial(0.90, {"latency.p50": 1.9}, True, number=0),
        trial(0.95, {"latency.p50": 1.5}, True, number=1),
        trial(0.95, {"latency.p50": 1.0}, True, number=2),
        trial(0.99, {"latency.p50": 3.0}, False, number=3),
        trial(state=TrialState.FAIL, measured=False, fail_reason="boom", number=4),
    ]
    chosen, feasible = decide.select(trials, thresholds)
    assert feasible and chosen is not None and chosen.number == 2


def test_a_contender_is_a_candidate_more_accurate_than_every_feasible_trial():
    # Only a candidate that would become the round's choice gets the confirmation's windows when undecided.
    assert decide.contender(0.2, [])
    assert decide.contender(0.2, [trial(0.9, feasible=False)]), "no feasible trial yet: every candidate contends"
    trials = [trial(0.7, feasible=True, number=0), trial(0.9, feasible=False, number=1)]
    assert decide.contender(0.75, trials) and not decide.contender(0.7, trials) and not decide.contender(0.5, trials)
    assert not decide.contender(0.8, [*trials, trial(0.8, state=TrialState.FAIL, number=2), trial(0.85, feasible=True)])


def test_selection_without_a_feasible_trial_takes_the_least_violating_measured_one():
    thresholds = {"latency.p50": 2.0}
    trials = [
        trial(0.99, {"latency.p50": 3.0}, False, number=0),
        trial(0.80, {"latency.p50": 2.2}, False, number=1),
        trial(0.70, {"latency.p50": 2.2}, False, number=2),
        # Skipped on a host budget (never measured): chosen only when nothing was measured.
        trial(0.99, {}, False, measured=False, number=3),
    ]
    chosen, feasible = decide.select(trials, thresholds)
    assert not feasible and chosen is not None and chosen.number == 1
    assert decide.select([trial(state=TrialState.FAIL, measured=False)], thresholds) == (None, False)


def test_objective_is_the_accuracy_or_the_papers_trade_off():
    budgets = parse_budgets(["size<=1MB", "latency.p50<=2ms"])
    assert decide.objective(config(), budgets, 0.9, {"latency.p50": 1.0}, {"latency.p50": 3.0}) == 0.9
    unconstrained = config(strategy="unconstrained", tradeoff_lambda=2.0)
    # The first device budget (not size): 100 * 0.9 + 2 * (3 - 1).
    assert decide.objective(unconstrained, budgets, 0.9, {"latency.p50": 1.0}, {"latency.p50": 3.0}) == 94.0
    # Not measured: no latency term.
    assert decide.objective(unconstrained, budgets, 0.9, {}, {"latency.p50": 3.0}) == 90.0


def test_recovery_counts_and_best_accuracy():
    trials = [
        trial(0.9, {}, True),
        trial(state=TrialState.FAIL, fail_reason=decide.INTERRUPTED),
        trial(state=TrialState.FAIL, fail_reason="device: down"),
        trial(state=TrialState.RUNNING),
        trial(0.95, {}, False),
    ]
    assert len(decide.counted(trials)) == 3
    assert [t.state for t in decide.interrupted(trials)] == [TrialState.RUNNING]
    assert decide.best_accuracy(trials) == 0.9
    assert decide.best_accuracy([]) is None


def test_uniform_search_bisects_to_the_smallest_feasible_ratio_and_converges():
    search = decide.UniformSearch(max_ratio=0.8, step=0.05)
    assert search.next_ratio([]) == 0.4
    history = [trial(0.9, {}, True, ratio=0.4)]
    assert search.next_ratio(history) == 0.2
    history.append(trial(0.9, {}, False, ratio=0.2))
    assert search.next_ratio(history) == 0.3
    history.append(trial(state=TrialState.FAIL, ratio=0.3, measured=False))  # a failed ratio counts as too low
    assert search.next_ratio(history) == 0.35
    history.append(trial(0.9, {}, True, ratio=0.35))
    nxt = search.next_ratio(history)
    assert nxt in search.tried(history)  # converged: nothing new to try between 0.3 and 0.35


def test_the_originals_median_and_the_measurement_kept():
    samples = [{"latency.p50": 3.0, "energy": None}, {"latency.p50": 1.0, "energy": None}, {"latency.p50": 2.1}]
    median = decide.median_values(samples)
    assert median == {"latency.p50": 2.1, "energy": None}
    assert decide.closest_to(samples, median) == 2


def test_cooling_plan_resolves_relative_budgets_on_the_original():
    budgets = parse_budgets(["latency.p50<=0.5x", "size<=1MB"])
    targets, schedule = decide.cooling_plan(budgets, {"latency.p50": 4.0, "size": 2e6}, config(rounds=3))
    assert targets == {"latency.p50": 2.0, "size": 1e6}
    assert schedule["latency.p50"][0] > schedule["latency.p50"][1] > schedule["latency.p50"][2] == 2.0
    one = decide.cooling_plan(budgets, {"latency.p50": 4.0, "size": 2e6}, config(schedule="one-step"))[1]
    assert one["latency.p50"] == [2.0]
    with pytest.raises(ConfigError, match="did not report latency.p50"):
        decide.cooling_plan(parse_budgets(["latency.p50<=1ms"]), {"latency.p50": None}, config())


def test_formats_slower_on_every_device_budget_are_dropped():
    ratios = {
        "int8": {"latency.p50": 1.5, "latency.p99": 1.3},
        "fp16": {"latency.p50": 1.5, "latency.p99": 1.05},
        "x": {"latency.p50": None},
    }
    assert decide.formats_to_drop(ratios) == ["int8"]


def test_drift_is_the_relative_change_since_the_reference():
    change = decide.drift({"a": 1.2, "b": 0.9, "c": None}, {"a": 1.0, "b": 1.0, "c": 1.0}, ["a", "b", "c"])
    assert change == {"a": pytest.approx(0.2), "b": pytest.approx(-0.1)}


def test_categorical_quant_distribution_is_what_the_plan_samples(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    asked = study.ask()
    decide.sample_plan(asked, space, config(), ["fp32", "int8"])
    assert asked.distributions["quant"] == CategoricalDistribution(["fp32", "int8"])


def test_the_composed_plan_rebuilds_the_final_channel_counts_from_the_original():
    from edgecompress.compress import CompressionPlan, apply_plan
    from edgecompress.workload import load_workload

    workload = load_workload(example="digits", val_limit=100)
    original = workload.build_model().eval()
    first_space = search_space(original, workload.input_shape, workload.ignore)
    first = CompressionPlan(ratios={g.name: 0.3 for g in first_space.groups}, round_to=8)
    once = apply_plan(original, first, workload, first_space)
    second_space = search_space(once, workload.input_shape, workload.ignore)
    # The last round's plan alone, applied to the original, gives another (larger) model.
    last = CompressionPlan(ratios={g.name: 0.4 for g in second_space.groups[:2]}, quant="int8", round_to=8)
    twice = apply_plan(once, last, workload, second_space)
    final_space = search_space(twice, workload.input_shape, workload.ignore)
    composed = decide.composed_plan(first_space, final_space, last)
    rebuilt = apply_plan(original, composed, workload, first_space)
    channels = {g.name: g.channels for g in search_space(rebuilt, workload.input_shape, workload.ignore).groups}
    assert channels == {g.name: g.channels for g in final_space.groups}
    assert composed.quant == "int8"
    alone = apply_plan(original, last, workload, first_space)
    assert {g.name: g.channels for g in search_space(alone, workload.input_shape, workload.ignore).groups} != channels


def test_host_compute_device_is_resolved_and_a_missing_gpu_is_a_config_error():
    import torch

    from edgecompress.compress import resolve_host_device

    assert resolve_host_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_host_device("auto") in ("cpu", "mps")
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_host_device("cuda")
    with pytest.raises(ConfigError, match="choose auto"):
        resolve_host_device("tpu")


def test_fine_tuning_on_an_explicit_device_returns_a_cpu_model_and_leaves_the_teacher_alone():
    import torch

    from edgecompress.compress import finetune
    from edgecompress.workload import load_workload

    workload = load_workload(example="digits", val_limit=100)
    teacher = workload.build_model().eval()
    torch.manual_seed(0)
    tuned = finetune(teacher, teacher, workload, steps=3, device="cpu")
    assert all(p.device.type == "cpu" for p in tuned.parameters())
    assert all(p.device.type == "cpu" for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), teacher.parameters(), strict=True))


def test_studies_are_named_after_the_model_they_tune():
    from edgecompress.search._driver import study_name

    assert study_name(config()) == "tune-digits"
    assert study_name(TuneConfig(model="mypkg.models:build", data="mypkg.data:loaders")) == "tune-mypkg.models.build"
    assert study_name(config(name="nightly")) == "nightly"


def _propose(study: optuna.Study) -> tuple[float, ...]:
    trial = study.ask()
    return tuple(trial.suggest_float(f"ratio:g{i}", 0.0, 0.8, step=0.05) for i in range(4))


def test_a_resumed_round_does_not_replay_its_samplers_stream():
    storage = optuna.storages.InMemoryStorage()
    cfg = config(seed=3, trials_per_round=8)
    study = optuna.create_study(storage=storage, sampler=decide.make_sampler(cfg, 0), direction="maximize")
    first = []
    for _ in range(3):
        trial = study.ask()
        params = tuple(trial.suggest_float(f"ratio:g{i}", 0.0, 0.8, step=0.05) for i in range(4))
        study.tell(trial, sum(params))
        first.append(params)
    name = study.study_name
    # What a resume did: the same seed again, so the random start of the stream comes back.
    replay = optuna.load_study(study_name=name, storage=storage, sampler=decide.make_sampler(cfg, 0))
    assert _propose(replay) == first[0]
    # The seed moves on with the trials the study holds.
    resumed = optuna.load_study(study_name=name, storage=storage, sampler=decide.make_sampler(cfg, 0, finished=4))
    assert _propose(resumed) not in first
    # And a plan proposed again finds the trial that evaluated it.
    complete = resumed.get_trials(states=(TrialState.COMPLETE,))
    assert decide.duplicate_of(complete[1].params, complete) is complete[1]
    assert decide.duplicate_of({"ratio:g0": 0.123}, complete) is None


def test_tune_measures_with_the_profiles_warm_up_unless_told_otherwise():
    from edgecompress.config import resolve_device
    from edgecompress.search import tune_measure_request

    profile = resolve_device("local")
    default = tune_measure_request(profile, config(), (1, 1, 8, 8))
    assert default.warmup_seconds == profile.measure.warmup_seconds == 0.5
    told = tune_measure_request(profile, config(warmup_seconds=0.05, runs=30, min_seconds=0.0), (1, 1, 8, 8))
    assert (told.warmup_seconds, told.runs, told.min_seconds) == (0.05, 30, 0.0)
    assert told.warmup_runs == profile.measure.warmup_runs  # the run count stays the profile's
