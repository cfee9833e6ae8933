"""The report's figures: matplotlib drawn to SVG strings, inlined in the page (no files beside it, no CDN)."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from edgecompress.analysis import PROBABILITIES, TailEstimate
from edgecompress.budgets import format_value

# Figures in one page share a document: each gets its own hash salt, so the ids matplotlib writes for clip paths
# and markers cannot collide between two inline SVGs.
_SALT = itertools.count()
ROUND_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
ORIGINAL = "#444444"
FINAL = "#2ca02c"


def round_colour(t: int) -> str:
    return ROUND_COLOURS[t % len(ROUND_COLOURS)]


@contextmanager
def figure(width: float = 6.4, height: float = 3.6, ncols: int = 1) -> Iterator[tuple[Any, Any]]:
    """A matplotlib figure (Agg, no display) with ``ncols`` axes; the caller turns it into SVG with ``svg``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": f"ec{next(_SALT)}",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
        try:
            yield fig, list(axes[0])
        finally:
            plt.close(fig)


def svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (the XML prolog and DOCTYPE removed)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _legend(ax: Any, outside: bool = False) -> None:
    """A legend without repeated labels; ``outside`` puts it right of the axes, off the points."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles, strict=True))
        where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if outside else {"loc": "best"}
        ax.legend(unique.values(), unique.keys(), fontsize=7, frameon=False, **where)


# -- tune figures ------------------------------------------------------------------------------------------------------


def accuracy_vs_metric(
    trials: Sequence[Mapping[str, Any]],
    key: str,
    unit: str,
    thresholds: Sequence[float],
    target: float,
    original: tuple[float | None, float],
    final: tuple[float | None, float] | None,
    bases: Sequence[tuple[int, float | None, float]],
) -> str:
    """Every measured trial's accuracy against one constrained metric, by round; each round's threshold drawn.

    Filled markers met their round's threshold, hollow ones did not. ``bases`` are the fine-tuned round results
    (round, value, accuracy); ``original`` and ``final`` are (value, accuracy).
    """
    with figure(5.6, 3.8) as (fig, (ax,)):
        for t, limit in enumerate(thresholds):
            colour = round_colour(t)
            points = [
                (tr["values"][key], tr["accuracy"], bool(tr.get("feasible")))
                for tr in trials
                if tr.get("round") == t
                and tr.get("accuracy") is not None
                and (tr.get("values") or {}).get(key) is not None
            ]
            for feasible in (True, False):
                xs = [p[0] for p in points if p[2] is feasible]
                ys = [p[1] for p in points if p[2] is feasible]
                if xs:
                    ax.scatter(
                        xs,
                        ys,
                        s=28,
                        facecolors=colour if feasible else "none",
                        edgecolors=colour,
                        linewidths=1.2,
                        label=f"round {t + 1} trials",
                        zorder=3,
                    )
            ax.axvline(
                limit,
                color=colour,
                linestyle="--",
                linewidth=1,
                label=f"round {t + 1} threshold {format_value(limit, unit)}",
            )
        ax.axvline(target, color="black", linewidth=1.4, label=f"budget {format_value(target, unit)}")
        for t, value, accuracy in bases:
            if value is not None:
                ax.scatter(
                    [value],
                    [accuracy],
                    marker="s",
                    s=46,
                    color=round_colour(t),
                    edgecolors="black",
                    linewidths=0.8,
                    zorder=4,
                    label=f"round {t + 1} fine-tuned",
                )
        if original[0] is not None:
            ax.scatter([original[0]], [original[1]], marker="*", s=140, color=ORIGINAL, zorder=5, label="original")
        if final is not None and final[0] is not None:
            ax.scatter(
                [final[0]],
                [final[1]],
                marker="D",
                s=60,
                color=FINAL,
                edgecolors="black",
                zorder=6,
                label="final (confirmed)",
            )
        ax.set_xlabel(f"{key} ({unit})")
        ax.set_ylabel("accuracy")
        ax.set_title(f"accuracy against {key} (filled: met the round's threshold)", fontsize=9)
        ax.grid(alpha=0.25)
        _legend(ax, outside=True)
        return svg(fig)


def cooling_schedule(
    schedule: Mapping[str, Sequence[float]],
    units: Mapping[str, str],
    originals: Mapping[str, float | None],
    targets: Mapping[str, float],
    measured: Mapping[str, Sequence[float | None]],
) -> str:
    """Threshold per round for every budget, with the original's value, the budget, and each round's result."""
    keys = list(schedule)
    with figure(max(5.6, min(4.6 * len(keys), 12.8)), 3.4, ncols=len(keys)) as (fig, axes):
        for ax, key in zip(axes, keys, strict=True):
            limits = list(schedule[key])
            rounds = np.arange(1, len(limits) + 1)
            ax.plot(rounds, limits, color="#1f77b4", marker="o", label="threshold c_t of the round")
            if originals.get(key) is not None:
                ax.axhline(originals[key], color=ORIGINAL, linestyle=":", label="original model")
            ax.axhline(targets[key], color="black", linewidth=1.2, label="budget")
            values = list(measured.get(key, ()))
            shown = [(r, v) for r, v in zip(rounds, values, strict=False) if v is not None]
            if shown:
                ax.plot(
                    [r for r, _ in shown],
                    [v for _, v in shown],
                    "s",
                    color="#ff7f0e",
                    label="fine-tuned result of the round",
                )
            ax.set_xticks(rounds)
            ax.set_xlabel("round")
            ax.set_ylabel(f"{key} ({units.get(key, '')})")
            ax.grid(alpha=0.25)
        # One legend under the panels: the same four kinds of line in each.
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=7, frameon=False)
        fig.tight_layout()
        return svg(fig)


def best_feasible(trials: Sequence[Mapping[str, Any]], original_accuracy: float | None) -> str:
    """Each trial's accuracy in the order run, and the best accuracy that met the round's threshold so far."""
    ordered = sorted(
        (tr for tr in trials if tr.get("state") == "COMPLETE" and tr.get("accuracy") is not None),
        key=lambda tr: (tr["round"], tr["number"]),
    )
    with figure(5.6, 3.4) as (fig, (ax,)):
        index = np.arange(1, len(ordered) + 1)
        best: list[float] = []
        current = math.nan
        previous_round = None
        for tr in ordered:
            if tr["round"] != previous_round:  # a new round judges against a new threshold: its own best
                current, previous_round = math.nan, tr["round"]
            if tr.get("feasible"):
                current = tr["accuracy"] if math.isnan(current) else max(current, tr["accuracy"])
            best.append(current)
        for t in sorted({tr["round"] for tr in ordered}):
            rows = [i for i, tr in enumerate(ordered) if tr["round"] == t]
            colour = round_colour(t)
            ax.scatter(
                index[rows],
                [ordered[i]["accuracy"] for i in rows],
                s=18,
                facecolors=[colour if ordered[i].get("feasible") else "none" for i in rows],
                edgecolors=colour,
                label=f"round {t + 1} trials",
                zorder=3,
            )
            ax.step(
                index[rows],
                [best[i] for i in rows],
                where="post",
                color=colour,
                linewidth=2,
                label=f"round {t + 1} best feasible",
            )
            if rows and rows[0] > 0:
                ax.axvline(index[rows[0]] - 0.5, color="#bbbbbb", linewidth=0.8)
        if original_accuracy is not None:
            ax.axhline(original_accuracy, color=ORIGINAL, linestyle=":", label="original accuracy")
        ax.set_xlabel("trial (in the order run)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.25)
        _legend(ax, outside=True)
        return svg(fig)


# -- latency figures ---------------------------------------------------------------------------------------------------


def latency_histogram(samples: Sequence[tuple[str, Sequence[int], str]]) -> str:
    """Histograms of latency samples (label, nanoseconds, colour) on a log axis: the body and the outliers both show."""
    with figure(6.4, 3.4) as (fig, (ax,)):
        arrays = [(label, np.asarray(ns, dtype=np.float64) / 1e6, colour) for label, ns, colour in samples if len(ns)]
        low = min(float(a.min()) for _, a, _ in arrays)
        high = max(float(a.max()) for _, a, _ in arrays)
        bins = np.geomspace(max(low, 1e-6), high * 1.0001 if high > low else low * 1.01 + 1e-6, 60)
        for label, array, colour in arrays:
            ax.hist(
                array,
                bins=bins,
                histtype="stepfilled",
                alpha=0.35,
                color=colour,
                label=f"{label}: {array.size} runs, p50 {np.median(array):.4g} ms",
            )
            ax.hist(array, bins=bins, histtype="step", color=colour, linewidth=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("latency per inference (ms, log)")
        ax.set_ylabel("runs (log)")
        ax.grid(alpha=0.25)
        _legend(ax)
        return svg(fig)


def tail_plot(samples: Sequence[tuple[str, Sequence[int], TailEstimate | None, str]]) -> str:
    """Exceedance probability per run: the empirical tail, the pWCET curve of the fit, and its marked points.

    An estimate that fell back to the observed maximum is drawn as a vertical line at that maximum.
    """
    with figure(6.4, 3.8) as (fig, (ax,)):
        lowest = min(PROBABILITIES)
        for label, ns, tail, colour in samples:
            x = np.sort(np.asarray(ns, dtype=np.float64) / 1e6)
            if x.size == 0:
                continue
            exceed = 1.0 - np.arange(1, x.size + 1) / x.size
            keep = exceed > 0
            ax.step(x[keep], exceed[keep], where="post", color=colour, linewidth=1.4, label=f"{label}: measured")
            if tail is None:
                continue
            if tail.fallback:
                ax.vlines(
                    tail.observed_max_ms,
                    lowest,
                    1.0 / x.size,
                    colors=colour,
                    linestyles="dotted",
                    label=f"{label}: pWCET = observed max ({tail.observed_max_ms:.4g} ms, no EVT fit)",
                )
                continue
            ps = np.geomspace(min(0.5, 10.0 / x.size), lowest, 60)
            ax.plot(
                [tail.quantile_ms(float(p)) for p in ps],
                ps,
                "--",
                color=colour,
                label=f"{label}: pWCET fit ({tail.method})",
            )
            ax.plot([tail.pwcet_ms[p] for p in tail.pwcet_ms], list(tail.pwcet_ms), "o", color=colour)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_ylim(lowest / 3, 1.2)
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("P(one run > latency)")
        ax.grid(alpha=0.25, which="both")
        _legend(ax)
        return svg(fig)


def energy_vs_accuracy(trials: Sequence[Mapping[str, Any]], key: str) -> str:
    """Energy per inference against accuracy for every trial where the device measured it."""
    with figure(6.4, 3.6) as (fig, (ax,)):
        for t in sorted({tr["round"] for tr in trials}):
            points = [
                (tr["values"][key], tr["accuracy"])
                for tr in trials
                if tr["round"] == t and tr.get("accuracy") is not None and (tr.get("values") or {}).get(key) is not None
            ]
            if points:
                ax.scatter(*zip(*points, strict=True), s=24, color=round_colour(t), label=f"round {t + 1}")
        ax.set_xlabel(f"{key} (mJ per inference)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.25)
        _legend(ax)
        return svg(fig)
