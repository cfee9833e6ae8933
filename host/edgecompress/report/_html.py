"""HTML reports people look at: a tune run's ``report.html``, and the same style of page for one model (bench, check).

Everything is in the one file: figures are inline SVG drawn by matplotlib, styles and the table-sorting script are
inline, so the page opens offline and can be attached to a ticket or a CI artifact as it is.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.analysis import TailEstimate, pwcet
from edgecompress.budgets import format_value, unit_of
from edgecompress.errors import ConfigError
from edgecompress.report import _plots as plots
from edgecompress.report._files import write_text
from edgecompress.report._page import Raw, cell, esc, fig, figs, kv_table, num, page, para, pre, table
from edgecompress.verdict import collapse_message

if TYPE_CHECKING:
    from edgecompress.compress import CompressionPlan, SearchSpace
    from edgecompress.gate import Baseline, CheckResult
    from edgecompress.observe import Observation

log = logging.getLogger("edgecompress.report")
REPORT_FILE = "report.html"
RESULTS_FILE = "results.json"
HOST_LIBRARIES = (
    "edgecompress",
    "torch",
    "torch-pruning",
    "onnx",
    "onnxruntime",
    "optuna",
    "numpy",
    "scipy",
    "matplotlib",
)


# -- data recorded for reports -----------------------------------------------------------------------------------------


def library_versions() -> dict[str, str | None]:
    """Python and the host libraries that shape results (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in HOST_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def group_channels(space: SearchSpace, plan: CompressionPlan) -> list[dict[str, Any]]:
    """Per group: channels in the round's base, the plan's ratio, and the channels left (as the pruner rounds them).

    From the plan alone: no second dependency graph after fine-tuning, so recording this cannot fail a round.
    """
    from edgecompress.compress import kept_channels

    ratios = space.group_ratios(plan.ratios)
    return [
        {
            "group": g.name,
            "before": g.channels,
            "ratio": ratios[g.name],
            "after": kept_channels(g.channels, ratios[g.name], plan.round_to) if ratios[g.name] else g.channels,
        }
        for g in space.groups
    ]


def _sample(observation: Mapping[str, Any] | None) -> list[int]:
    """The raw latencies (ns) of an observation, extra measurements pooled as the search pooled them."""
    if not observation:
        return []
    sample = list((observation.get("measurement") or {}).get("latencies_ns") or [])
    for extra in observation.get("extra_measurements") or []:
        sample += list(extra.get("latencies_ns") or [])
    return sample


def _tail(sample: Sequence[int]) -> TailEstimate | None:
    return pwcet(sample) if sample else None


# -- the tune report ---------------------------------------------------------------------------------------------------


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's results.json; ConfigError when the folder is not a finished or stopped tune run."""
    path = Path(run_dir) / RESULTS_FILE
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir} is not a folder")
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: not a tune run folder, or a run killed before it wrote results "
            f"(continue it with `edgecompress tune --resume {run_dir}`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict) or "trials" not in data:
        raise ConfigError(f"{path}: not the results of an edgecompress tune run")
    return data


def _budget_keys(results: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(key, unit, target) of each budget, in the order given."""
    targets = (results.get("base") or {}).get("targets") or {}
    return [(key, unit_of(key), float(target)) for key, target in targets.items()]


def _verdict(results: Mapping[str, Any]) -> tuple[str, str]:
    final = results.get("final")
    if final is None:
        return "stopped before the last round finished (resume with edgecompress tune --resume)", "warn"
    if final.get("identical_to_original"):
        return "the original already meets the budgets (the final model is the original's bytes)", "ok"
    if final.get("met"):
        met = f"budgets met ({final.get('which')}): {(final.get('verdict') or {}).get('summary', '')}"
        if final.get("accuracy_collapsed"):
            original = (results.get("base") or {}).get("candidate", {}).get("accuracy", 0.0)
            return f"{collapse_message(original, final.get('accuracy', 0.0))}. {met}", "bad"
        return met, "ok"
    if final.get("outcome") == "inconclusive":
        return "budgets inconclusive: the measurements could not decide them (never reported as met)", "warn"
    return "budgets not met: no candidate was confirmed on the device", "bad"


def _plan_text(plan: Mapping[str, Any] | None) -> str:
    if not plan:
        return ""
    ratios = plan.get("ratios") or {}
    parts = [f"{name} {ratio:.2f}" for name, ratio in ratios.items() if ratio]
    return f"{plan.get('quant', '?')}; " + (", ".join(parts) if parts else "nothing pruned")


def _final_model(results: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None]:
    """The model to set beside the original: the confirmed final one, else the last round's (labelled so)."""
    final = results.get("final") or {}
    if final.get("met"):
        return "final", final.get("observation")
    rounds = results.get("rounds") or []
    if rounds:
        return f"round {rounds[-1]['round']} model (not confirmed)", rounds[-1]["next_base"].get("observation")
    return "final", None


def paired_decisions(final: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A met final answer's decisions judged on the paired ratio to the original (relative device budgets), by key:
    that ratio is the figure to show for them, not the final's absolute value of its minute against the limit
    resolved at the start of the run (which can read over it while the verdict is met)."""
    if not final.get("met"):
        return {}
    decisions = (final.get("verdict") or {}).get("decisions") or {}
    return {k: d for k, d in decisions.items() if d.get("paired")}


def _summary(results: Mapping[str, Any], keys: Sequence[tuple[str, str, float]]) -> Raw:
    base = results.get("base") or {}
    candidate = base.get("candidate") or {}
    final = results.get("final") or {}
    met = bool(final.get("met"))
    rows: list[list[Any]] = [
        [
            "accuracy",
            num(candidate.get("accuracy")),
            num(final.get("accuracy") if met else None),
            "",
            num(final.get("accuracy_drop") if met else None),
        ]
    ]
    paired_by_key = paired_decisions(final)
    for key, unit, target in keys:
        before = (base.get("values") or {}).get(key)
        after = (final.get("values") or {}).get(key) if met else None
        paired = paired_by_key.get(key)
        if paired is not None:
            # The final / original figure is the paired ratio, not two measurements minutes apart; the budget is the
            # ratio (its absolute form is the start's).
            budget = f"{paired['threshold']:g}x ({format_value(target, unit)} at the start)"
            rows.append([key, num(before, unit=unit), num(after, unit=unit), budget, f"{paired['value']:.3f}x paired"])
            continue
        change = None if before in (None, 0) or after is None else after / before
        rows.append(
            [key, num(before, unit=unit), num(after, unit=unit), format_value(target, unit), num(change, 3, "x")]
        )
    budgeted = {key for key, _, _ in keys}
    for label, field, unit in (("size", "size_bytes", "bytes"), ("MACs", "macs", ""), ("parameters", "params", "")):
        if label in budgeted:
            continue  # already a budget row
        before, after = candidate.get(field), final.get(field) if met else None
        rows.append(
            [
                label,
                num(before, unit=unit),
                num(after, unit=unit),
                "",
                num(None if not before or after is None else after / before, 3, "x"),
            ]
        )
    rows.append(["sha256", (candidate.get("sha256") or "")[:16], (final.get("sha256") or "")[:16], "", ""])
    return table(("", "original", "final", "budget", "final / original (accuracy: drop)"), rows)


def _search_section(results: Mapping[str, Any], keys: Sequence[tuple[str, str, float]]) -> Raw:
    trials = results.get("trials") or []
    base = results.get("base") or {}
    final = results.get("final") or {}
    rounds = results.get("rounds") or []
    accuracy0 = (base.get("candidate") or {}).get("accuracy")
    items = []
    for key, unit, target in keys:
        schedule = (base.get("thresholds") or {}).get(key) or []
        unmeasured = sum(
            1 for tr in trials if tr.get("state") == "COMPLETE" and (tr.get("values") or {}).get(key) is None
        )
        bases = [
            (r["round"], (r["next_base"].get("values") or {}).get(key), r["next_base"].get("accuracy")) for r in rounds
        ]
        svg_text = plots.accuracy_vs_metric(
            trials,
            key,
            unit,
            schedule,
            target,
            ((base.get("values") or {}).get(key), accuracy0 or 0.0),
            ((final.get("values") or {}).get(key), final.get("accuracy", 0.0)) if final.get("met") else None,
            bases,
        )
        caption = f"{len(trials)} trials; dashed lines: each round's threshold; solid: the budget."
        if unmeasured:
            caption += f" {unmeasured} trial(s) without a {key} value (over a host-checked budget, not measured)."
        items.append(fig(svg_text, caption))
    failed = sum(1 for tr in trials if tr.get("state") == "FAIL")
    note = (
        para(f"{failed} trial(s) failed and are not drawn; their reasons are in the trial table.", "note")
        if failed
        else Raw("")
    )
    return Raw(figs(items) + note)


def _schedule_section(results: Mapping[str, Any], keys: Sequence[tuple[str, str, float]]) -> Raw:
    base = results.get("base") or {}
    config = results.get("config") or {}
    schedule = {key: (base.get("thresholds") or {}).get(key) or [] for key, _, _ in keys}
    rounds = {r["round"]: r for r in results.get("rounds") or []}
    measured = {
        key: [
            (rounds[t]["next_base"].get("values") or {}).get(key) if t in rounds else None
            for t in range(len(schedule[key]))
        ]
        for key, _, _ in keys
    }
    svg_text = plots.cooling_schedule(
        schedule, {k: u for k, u, _ in keys}, base.get("values") or {}, {k: t for k, _, t in keys}, measured
    )
    kind = config.get("schedule")
    caption = (
        f"{kind} schedule, alpha {config.get('alpha')}, {len(next(iter(schedule.values()), []))} round(s); "
        "a budget the original already meets stays at the budget."
    )
    rows = [
        [t + 1, *[num(schedule[k][t] if t < len(schedule[k]) else None, unit=u) for k, u, _ in keys]]
        for t in range(max((len(v) for v in schedule.values()), default=0))
    ]
    return Raw(figs([fig(svg_text, caption)]) + table(("round", *[f"threshold {k}" for k, _, _ in keys]), rows))


def _progress_section(results: Mapping[str, Any]) -> Raw:
    trials = results.get("trials") or []
    accuracy0 = ((results.get("base") or {}).get("candidate") or {}).get("accuracy")
    svg_text = plots.best_feasible(trials, accuracy0)
    return figs(
        [
            fig(
                svg_text,
                "Filled: met the round's threshold. The line is the best such accuracy so far in "
                "the round; each round starts again because its threshold is tighter.",
            )
        ]
    )


def _latency_rows(samples: Sequence[tuple[str, Sequence[int], TailEstimate | None]]) -> tuple[Raw, Raw]:
    stats_rows, tail_rows = [], []
    import numpy as np

    for label, sample, tail in samples:
        ms = np.asarray(sample, dtype=np.float64) / 1e6
        stats_rows.append(
            [
                label,
                num(int(ms.size)),
                num(float(ms.mean())),
                num(float(np.median(ms))),
                *[num(float(np.percentile(ms, q))) for q in (90, 99, 99.9)],
                num(float(ms.max())),
            ]
        )
        if tail is not None:
            verdict = tail.iid.verdict() if tail.iid else "i.i.d. not checked (fewer than 20 runs)"
            tail_rows.append(
                [label, tail.method, verdict, *[num(v) for v in tail.pwcet_ms.values()], "; ".join(tail.warnings)]
            )
    stats = table(("model", "runs", "mean ms", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"), stats_rows)
    probabilities = next((list(t.pwcet_ms) for _, _, t in samples if t is not None), [])
    tails = table(
        ("model", "pWCET method", "i.i.d. check", *[f"pWCET @{p:g}/run ms" for p in probabilities], "notes"), tail_rows
    )
    return stats, tails


def _latency_section(results: Mapping[str, Any]) -> Raw:
    original = (results.get("base") or {}).get("observation")
    label, final = _final_model(results)
    samples = []
    for name, observation, colour in (("original", original, plots.ORIGINAL), (label, final, plots.FINAL)):
        sample = _sample(observation)
        if sample:
            samples.append((name, sample, _tail(sample), colour))
    if not samples:
        return para("No raw latency sample was recorded for the original or the final model.", "note")
    missing = [] if _sample(original) else ["the original's raw sample is not in results.json (an older run)"]
    figures = _latency_figures(
        samples,
        "Latency per inference on the device, both models on the same log bins.",
        "Exceedance probability per run. pWCET by extreme value theory where the sample is large enough and passes "
        "the i.i.d. check; the largest of the projections and the observed maximum when it fails (conservative); "
        "the observed maximum under 500 runs.",
    )
    return Raw(figures + "".join(para(m, "note") for m in missing))


def _latency_figures(samples: list[Any], hist_caption: str, tail_caption: str) -> Raw:
    """Histograms, exceedance plot, statistics and pWCET tables of (name, sample, tail, colour) samples."""
    hist = plots.latency_histogram([(n, s, c) for n, s, _, c in samples])
    tail = plots.tail_plot(samples)
    stats, tails = _latency_rows([(n, s, t) for n, s, t, _ in samples])
    return Raw(figs([fig(hist, hist_caption), fig(tail, tail_caption)]) + stats + tails)


def _energy_section(results: Mapping[str, Any]) -> Raw:
    trials = results.get("trials") or []
    original = (results.get("base") or {}).get("observation") or {}
    label, final = _final_model(results)
    rows = []
    for name, observation in (("original", original), (label, final or {})):
        energy = observation.get("energy")
        if energy:
            rows.append(
                [
                    name,
                    energy.get("source"),
                    num(energy.get("energy_mj"), unit="mJ"),
                    num(energy.get("active_energy_mj"), unit="mJ"),
                    num(energy.get("mean_power_w"), unit="W"),
                    num(energy.get("idle_power_w"), unit="W"),
                    "yes" if energy.get("partial") else "no",
                ]
            )
    measured = [tr for tr in trials if (tr.get("values") or {}).get("energy") is not None]
    if not rows and not measured:
        hello = (results.get("device") or {}).get("hello") or {}
        sources = (
            ", ".join(
                str(s.get("name", s)) if isinstance(s, dict) else str(s) for s in hello.get("power_sources") or []
            )
            or "none"
        )
        return para(
            f"Energy was not measured: the device's power sources: {sources}. Energy is reported as "
            "unavailable, never as zero.",
            "muted",
        )
    parts = [
        table(
            ("model", "source", "energy / inference", "above idle", "mean power", "idle power", "partial rails"), rows
        )
    ]
    if measured:
        parts.insert(
            0,
            figs(
                [
                    fig(
                        plots.energy_vs_accuracy(measured, "energy"),
                        f"{len(measured)} trial(s) with energy measured on the device.",
                    )
                ]
            ),
        )
    return Raw("".join(parts))


def _plan_section(results: Mapping[str, Any]) -> Raw:
    rounds = results.get("rounds") or []
    if not rounds:
        return para("No round finished: there is no chosen plan yet.", "muted")
    if all("groups" in r for r in rounds):
        first = rounds[0]["groups"]
        per_round = [{g["group"]: g for g in r["groups"]} for r in rounds]
        headers = ["group", "original channels"]
        for r in rounds:
            headers += [f"round {r['round'] + 1} channels", f"round {r['round'] + 1} removed"]
        headers.append("kept")
        rows = []
        for g in first:
            row: list[Any] = [g["group"], num(g["before"])]
            after = g["before"]
            for entry in per_round:
                this = entry.get(g["group"])
                if this is None:
                    row += [cell("–"), num(None)]
                    continue
                # What the pruner did, not the plan's ratio: channels go in multiples of round_to, so a ratio
                # can remove fewer channels than it says, or none.
                row += [
                    cell(f"{this['before']} -> {this['after']}", this["after"]),
                    num(this["before"] - this["after"]),
                ]
                after = this["after"]
            row.append(num(after / g["before"] if g["before"] else None, 3, "x"))
            rows.append(row)
        quant = ", ".join(f"round {r['round'] + 1}: {r['next_base'].get('plan', {}).get('quant')}" for r in rounds)
        return Raw(
            table(headers, rows, sortable=True, id_="plan-table")
            + para(
                "Channels each round's chosen plan removed from each group (the plan's ratios are rounded to whole "
                f"channels in multiples of its round_to). Numeric format: {quant}."
            )
        )
    rows = [[r["round"] + 1, _plan_text(r["next_base"].get("plan"))] for r in rounds]
    return Raw(
        table(("round", "chosen plan (ratio of channels removed per group or stage)"), rows)
        + para("Channel counts per group were not recorded by this run (an older version).", "note")
    )


def _rounds_section(results: Mapping[str, Any], keys: Sequence[tuple[str, str, float]]) -> Raw:
    rows = []
    for r in results.get("rounds") or []:
        nb = r["next_base"]
        rows.append(
            [
                r["round"] + 1,  # rounds are counted from 1 wherever people read them (console, report)
                num(r["chosen_trial"]),
                "yes" if r.get("feasible") else "no (least violating)",
                *[num((r.get("thresholds") or {}).get(k), unit=u) for k, u, _ in keys],
                num(r.get("before_finetune_accuracy")),
                num(nb.get("accuracy")),
                *[num((nb.get("values") or {}).get(k), unit=u) for k, u, _ in keys],
                num(nb.get("macs")),
                _plan_text(nb.get("plan")),
                (r.get("base_verdict") or {}).get("summary", "") or "-",
            ]
        )
    headers = (
        "round",
        "chosen trial",
        "met threshold",
        *[f"threshold {k}" for k, _, _ in keys],
        "accuracy before fine-tune",
        "after fine-tune",
        *[f"{k} after" for k, _, _ in keys],
        "MACs",
        "plan",
        "fresh measurement of the base",
    )
    rejected = [
        [item.get("which"), num(item.get("accuracy")), item.get("outcome"), item.get("summary")]
        for item in (results.get("final") or {}).get("rejected") or []
    ]
    rounds = table(headers, rows, sortable=True, id_="rounds-table")
    if not rejected:
        return rounds
    why = table(("rejected for the final answer", "accuracy", "verdict", "why"), rejected)
    return Raw(str(rounds) + str(why))


def _constraint(trial: Mapping[str, Any], key: str, unit: str, values: Mapping[str, Any]) -> Raw:
    """A trial's constraint for one budget; "-" where the budget was never measured (a candidate the host already
    knew was over a size budget gets no device time, and its 0 told the sampler "no evidence", not "on the limit")."""
    constraints = trial.get("constraints")
    if not isinstance(constraints, dict) or key not in values:
        return num(None)
    decision = (trial.get("decisions") or {}).get(key) or {}
    return num(constraints.get(key), unit="" if decision.get("paired") else unit)


def _trials_section(results: Mapping[str, Any], keys: Sequence[tuple[str, str, float]]) -> Raw:
    rows = []
    for tr in results.get("trials") or []:
        values = tr.get("values") or {}
        latency = tr.get("latency") or {}
        candidate = tr.get("candidate") or {}
        plan = tr.get("plan") or {}
        ratios = list((plan.get("ratios") or {}).values())
        feasible = tr.get("feasible")
        mark = "✓" if feasible else ("✗" if feasible is False else "–")
        rows.append(
            [
                num(None if tr.get("round") is None else tr["round"] + 1),
                num(tr.get("number")),
                tr.get("state"),
                cell(mark, int(bool(feasible))),
                num(tr.get("accuracy")),
                *[num(values.get(k), unit=u) for k, u, _ in keys],
                *[_constraint(tr, k, u, values) for k, u, _ in keys],
                num(latency.get("p50_ms")),
                num(latency.get("p99_ms")),
                num(latency.get("max_ms")),
                num(candidate.get("size_bytes"), unit="bytes"),
                num(candidate.get("macs")),
                plan.get("quant", ""),
                num(sum(ratios) / len(ratios) if ratios else (0.0 if plan else None), 3),
                num(tr.get("duration_s"), 3),
                ", ".join((tr.get("observation") or {}).get("flags") or []),
                tr.get("fail_reason") or "",
                "/".join(w for w in (tr.get("worker"), tr.get("member")) if w),
                _plan_text(plan),
            ]
        )
    headers = (
        "round",
        "trial",
        "state",
        "met",
        "accuracy",
        *keys_headers(keys),
        "p50 ms",
        "p99 ms",
        "max ms",
        "model size",
        "MACs",
        "quant",
        "mean ratio",
        "seconds",
        "flags",
        "failure",
        "measured on",
        "plan",
    )
    return Raw(
        para("Click a column header to sort.", "muted") + table(headers, rows, sortable=True, id_="trials-table")
    )


def _scale_section(results: Mapping[str, Any]) -> Raw:
    """The devices and hosts that worked the run: per member its trials, leases, leases lost and busy share; per
    host (a shared run's workers) its trials; how many trials were in flight at once and whether the host overlapped."""
    device = results.get("device") or {}
    scale = device.get("scale") or {}
    trials = results.get("trials") or []
    measured: dict[str, int] = {}
    by_host: dict[str, int] = {}
    for tr in trials:
        # The devices table is this host's pool: a worker's devices are its own (their trials count per host).
        own = not tr.get("worker") or str(tr["worker"]).startswith("tune@")
        if own and tr.get("state") == "COMPLETE" and tr.get("member") and tr.get("duplicate_of") is None:
            measured[tr["member"]] = measured.get(tr["member"], 0) + 1
        if tr.get("worker"):
            by_host[tr["worker"]] = by_host.get(tr["worker"], 0) + 1
    rows = []
    for name, member in (scale.get("members") or {}).items():
        if "left_out" in member:
            rows.append([name, "left out", "", "", "", "", member["left_out"]])
            continue
        state = "dropped" if member.get("dropped") else ("away" if member.get("away") else "in the pool")
        rows.append(
            [
                name,
                state,
                num(measured.get(name, 0)),
                num(member.get("leases")),
                num(member.get("leases_lost")),
                "" if member.get("busy_fraction") is None else f"{100 * member['busy_fraction']:.1f}",
                ""
                if member.get("busy_fraction_in_trials") is None
                else f"{100 * member['busy_fraction_in_trials']:.1f}",
            ]
        )
    if not rows:
        return para("Not recorded by this run (an older version).", "muted")
    overlap = device.get("overlap") or {}
    facts = [
        ("overlap", ("on: " if overlap.get("on") else "off: ") + str(overlap.get("why", "")) if overlap else None),
        ("trials in flight at most", scale.get("in_flight_max")),
        (
            "host worker busy",
            None if scale.get("host_busy_fraction") is None else f"{100 * scale['host_busy_fraction']:.1f}%",
        ),
    ]
    parts = [
        para(
            "Busy is the share of the run's wall time a device was leased (uploading and measuring); the rest it "
            "waited on the host (building, scoring, fine-tuning between rounds). In trials: the same share over the "
            "rounds' trials only."
        ),
        table(("device", "state", "trials measured", "leases", "leases lost", "busy %", "busy % in trials"), rows),
        kv_table(facts),
    ]
    if by_host:
        parts.append(table(("host", "trials"), [[host, num(n)] for host, n in sorted(by_host.items())]))
    return Raw("".join(parts))


def keys_headers(keys: Sequence[tuple[str, str, float]]) -> list[str]:
    return [k for k, _, _ in keys] + [f"{k} − threshold" for k, _, _ in keys]


def _drift_section(results: Mapping[str, Any]) -> Raw:
    rows = []
    for record in results.get("drift") or []:
        for i, m in enumerate(record.get("measurements") or []):
            rows.append(
                [
                    record.get("round", 0) + 1,
                    i + 1,
                    ", ".join(
                        f"{k} {format_value(v, unit_of(k))}"
                        for k, v in (m.get("values") or {}).items()
                        if v is not None
                    ),
                    ", ".join(f"{k} {100 * v:+.1f}%" for k, v in (m.get("drift") or {}).items()),
                    "yes" if record.get("warned") else "no",
                ]
            )
    if not rows:
        return para("No drift checks (a single round, or none reached).", "muted")
    return Raw(
        para(
            "Before each round after the first, the original model is measured again: a device whose "
            "speed drifted shifts every figure of the round."
        )
        + table(("round", "measurement", "original now", "drift", "warned"), rows)
    )


def _environment_rows(hello: Mapping[str, Any]) -> list[tuple[str, Any]]:
    cpu = hello.get("cpu") or {}
    memory = hello.get("memory") or {}
    python = hello.get("python") or {}
    runtimes = "; ".join(
        f"{r.get('name')} {r.get('version')} ({', '.join(r.get('providers') or [])})"
        for r in hello.get("runtimes") or []
    )
    sources = (
        ", ".join(str(s.get("name", s)) if isinstance(s, dict) else str(s) for s in hello.get("power_sources") or [])
        or "none"
    )
    rows = [
        ("board", hello.get("board")),
        ("L4T", hello.get("l4t")),
        ("CPU", f"{cpu.get('model')} ({cpu.get('arch')}, {cpu.get('count')} cores)" if cpu else None),
        (
            "memory",
            f"{memory['total_bytes'] / 2**30:.1f} GiB" if memory.get("total_bytes") else None,
        ),  # as devices info
        ("runtimes", runtimes),
        ("device Python", python.get("version")),
        ("device numpy", hello.get("numpy")),
        ("power sources", sources if "power_sources" in hello else None),
        ("thermal zones", len(hello["thermal_zones"]) if "thermal_zones" in hello else None),
        (
            "agent",
            f"{hello.get('agent_version')}" + (f" (protocol {hello['protocol']})" if "protocol" in hello else ""),
        ),
    ]
    return [(k, v) for k, v in rows if v not in (None, "")]  # a check result keeps less of the hello than tune


def _environment_section(results: Mapping[str, Any]) -> Raw:
    device = results.get("device") or {}
    config = results.get("config") or {}
    host = results.get("host")
    parts = [
        Raw("<h3>Device</h3>"),
        kv_table([("profile", device.get("profile")), *_environment_rows(device.get("hello") or {})]),
    ]
    parts.append(Raw("<h3>Host</h3>"))
    parts.append(
        kv_table(list(host.items()))
        if host
        else para("Host library versions were not recorded by this run (an older version).", "note")
    )
    parts.append(Raw("<h3>Search</h3>"))
    parts.append(
        kv_table(
            [
                ("seed", config.get("seed")),
                ("sampler", config.get("sampler")),
                ("strategy", config.get("strategy")),
                ("schedule", config.get("schedule")),
                ("rounds × trials", f"{config.get('rounds')} × {config.get('trials_per_round')}"),
                ("storage", config.get("storage") or "study.sqlite3 in the run folder"),
            ]
        )
    )
    parts.append(Raw("<h3>Command</h3>"))
    parts.append(pre(results.get("command") or "(not recorded: started from the library)"))
    parts.append(Raw("<details><summary>Full configuration</summary>"))
    parts.append(pre(json.dumps(config, indent=1)))
    parts.append(Raw("</details>"))
    return Raw("".join(parts))


def tune_report_html(results: Mapping[str, Any]) -> str:
    """The report of one tune run from its results.json."""
    keys = _budget_keys(results)
    verdict, klass = _verdict(results)
    config = results.get("config") or {}
    device = results.get("device") or {}
    name = config.get("name") or f"tune-{config.get('example') or 'model'}"
    budgets = ", ".join(b.get("text", "") for b in results.get("budgets") or [])
    subtitle = [
        Raw(f'<span class="verdict {klass}">{esc(verdict)}</span>'),
        f"{name} on {device.get('profile')} ({(device.get('hello') or {}).get('board')}) · budgets {budgets}"
        f" · edgecompress {results.get('edgecompress')}",
    ]
    sections: list[tuple[str, str, Raw]] = [("summary", "Summary", _summary(results, keys))]
    if keys:
        sections += [
            ("search", "Accuracy against each budget", _search_section(results, keys)),
            ("schedule", "Cooling schedule", _schedule_section(results, keys)),
        ]
    sections += [
        ("progress", "Best feasible accuracy", _progress_section(results)),
        ("latency", "Latency and tail", _latency_section(results)),
        ("energy", "Energy", _energy_section(results)),
        ("plan", "Chosen plan per group", _plan_section(results)),
        ("rounds", "Rounds", _rounds_section(results, keys)),
        ("trials", "Trials", _trials_section(results, keys)),
        ("drift", "Device drift", _drift_section(results)),
        ("scale", "Devices and hosts", _scale_section(results)),
        ("environment", "Device, versions, command", _environment_section(results)),
    ]
    return page(f"edgecompress tune: {name}", subtitle, sections)


def write_tune_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write (or rewrite) a run's report.html from its results.json; returns the path written."""
    results = load_results(run_dir)
    return write_text(out or Path(run_dir) / REPORT_FILE, tune_report_html(results))


def write_tune_report_or_warn(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The report at the end of a run: a failure is a warning (the run and its results are kept), never an error."""
    try:
        return write_tune_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - a broken report must not lose a finished search
        log.warning("could not write the report", exc_info=True)
        message = (
            f"warning: could not write {Path(run_dir) / REPORT_FILE} ({type(exc).__name__}: {exc}); "
            f"retry with `edgecompress report {run_dir}`"
        )
        (warn or log.warning)(message)
        return None


# -- one model: bench and check ----------------------------------------------------------------------------------------


def _model_latency(sample: Sequence[int], baseline: tuple[str, Sequence[int]] | None) -> Raw:
    samples = [("this run", sample, _tail(sample), plots.FINAL)]
    if baseline and baseline[1]:
        samples.insert(0, (baseline[0], baseline[1], _tail(baseline[1]), plots.ORIGINAL))
    return _latency_figures(
        samples,
        "Latency per inference on the device (log bins).",
        "Exceedance probability per run with the pWCET estimate.",
    )


def _energy_table(energy: Mapping[str, Any] | None) -> Raw:
    if not energy:
        return para("Energy was not measured (no power source on the device): unavailable, never zero.", "muted")
    return kv_table(
        [
            ("source", energy.get("source")),
            ("energy / inference", f"{energy.get('energy_mj'):.4g} mJ"),
            ("above idle", format_value(energy.get("active_energy_mj"), "mJ")),
            ("mean power", format_value(energy.get("mean_power_w"), "W")),
            ("idle power", format_value(energy.get("idle_power_w"), "W")),
            ("partial rails", "yes" if energy.get("partial") else "no"),
        ]
    )


def bench_report_html(
    model: str,
    device: str,
    runtime: str,
    observation: Observation,
    hello: Mapping[str, Any],
    settings: Mapping[str, Any],
    command: str,
) -> str:
    """The page of one ``bench`` measurement."""
    stats = observation.latency
    sample = list(observation.measurement.latencies_ns)
    for extra in observation.extra_measurements:
        sample += list(extra.latencies_ns)
    facts = kv_table(
        [
            ("model", model),
            ("sha256", observation.sha256),
            ("size", format_value(observation.size_bytes, "bytes")),
            ("runtime", runtime),
            ("first inference", f"{stats.first_inference_ms:.4g} ms"),
            ("load", f"{stats.load_ms:.4g} ms"),
            ("flags", ", ".join(observation.flags) or "none"),
        ]
    )
    sections = [
        ("model", "Model", facts),
        ("latency", "Latency and tail", _model_latency(sample, None)),
        ("energy", "Energy", _energy_table(observation.energy.to_json() if observation.energy else None)),
        ("environment", "Device, versions, command", _model_environment(device, hello, settings, command)),
    ]
    subtitle = [
        f"{model} on {device} ({hello.get('board')}), {runtime}: p50 {stats.p50_ms:.4g} ms, "
        f"p99 {stats.p99_ms:.4g} ms, {stats.count} runs"
    ]
    return page(f"edgecompress bench: {Path(model).name}", subtitle, sections)


def check_report_html(
    result: CheckResult, baseline: Baseline | None = None, hello: Mapping[str, Any] | None = None, command: str = ""
) -> str:
    """The page of one ``check``: budgets, regressions against the baseline, latency beside the baseline's."""
    status = {
        "pass": "✓ pass",
        "fail": "✗ FAIL",
        "error": "⚠ error",
        "skipped": "– skipped",
        "inconclusive": "? inconclusive",
    }
    budgets = (
        table(
            ("budget", "status", "measured", "limit", "details"),
            [
                [b.budget, status[b.status], format_value(b.value, b.unit), format_value(b.target, b.unit), b.message]
                for b in result.budgets
            ],
        )
        if result.budgets
        else para("No budgets were given.")
    )
    regressions = table(
        ("regression", "status", "details"),
        [[f"regression {r.metric}", status[r.status], r.message] for r in result.regressions],
    )
    observation = result.extra.get("observation") or {}
    verdict = {0: ("passed", "ok"), 1: ("FAILED", "bad"), 2: ("could not be checked", "warn")}[result.exit_code]
    facts = kv_table(
        [
            ("model", result.model),
            ("path", result.model_path),
            ("sha256", result.sha256),
            ("size", format_value(result.size_bytes, "bytes")),
            ("runtime", f"{result.runtime} {result.runtime_version} ({', '.join(result.providers)})"),
            ("started (UTC)", result.started_utc),
            ("flags", ", ".join(observation.get("flags") or []) or "none"),
        ]
    )
    base = None if baseline is None else (f"baseline {baseline.started_utc}", baseline.latencies_ns)
    notes = "".join(para(n, "note") for n in result.notes)
    sections = [
        ("checks", "Budgets and regressions", Raw(budgets + regressions + notes)),
        ("model", "Model", facts),
        ("latency", "Latency and tail", _model_latency(result.latencies_ns, base)),
        ("energy", "Energy", _energy_table(observation.get("energy"))),
        (
            "environment",
            "Device, versions, command",
            _model_environment(
                result.device,
                hello or {"board": result.board, "agent_version": result.agent_version},
                result.settings,
                command,
            ),
        ),
    ]
    subtitle = [
        Raw(f'<span class="verdict {verdict[1]}">{verdict[0]}</span>'),
        f"{result.model} on {result.device} ({result.board})"
        + (f" · baseline {baseline.describe()}" if baseline else " · no baseline"),
    ]
    return page(f"edgecompress check: {result.model}", subtitle, sections)


def _model_environment(device: str, hello: Mapping[str, Any], settings: Mapping[str, Any], command: str) -> Raw:
    return Raw(
        "<h3>Device</h3>"
        + kv_table([("profile", device), *_environment_rows(hello)])
        + "<h3>Host</h3>"
        + kv_table(list(library_versions().items()))
        + "<h3>Measurement settings</h3>"
        + pre(json.dumps(settings, indent=1, default=str))
        + "<h3>Command</h3>"
        + pre(command or " ".join(sys.argv))
    )


def write_html(text: str, path: str | Path) -> Path:
    """Write a page (atomically; ``-`` for stdout)."""
    return write_text(path, text)
