"""Search quality against the paper's baselines, side by side in one run.

    python benchmarks/search_quality.py --example fashion-mnist --budgets 0.5 0.35 --seeds 0 1 2 \
        --measurements 24 --out bench-runs/search-quality

Every method gets the same number of candidate measurements on the device (`--measurements`, plus the int8 probe of
the original where tune makes it, counted in the table): the cooled
schedules spread them over `--rounds` rounds, the single-round methods spend them in one study. The distillation
budget is equal too: `--finetune-steps` after each round of a cooled schedule, `--rounds` times that after the one
round of the others. For each method,
budget and seed it runs `edgecompress tune` in-process on the local device and records the best accuracy confirmed
on the device as meeting the budget (or "not met"), the device measurements actually made, and the wall time.
Prints a Markdown table (mean and spread over seeds) and writes every run's folder under --out, plus a PNG of
accuracy against budget per method. It resumes from --out's rows.jsonl, so a long comparison runs in pieces (one
seed and budget each); `--aggregate` then prints the tables and draws the plot of what rows.jsonl holds without
running anything, and `--keep DIR` writes the rows and each run's results without raw observations, to commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from edgecompress.config import TuneConfig
from edgecompress.search import run_tune

METHODS = {
    "exponential": {"schedule": "exponential"},
    "exponential+kd": {"schedule": "exponential", "candidate_finetune_steps": 20},
    "linear": {"schedule": "linear"},
    "one-step": {"schedule": "one-step"},
    "unconstrained": {"strategy": "unconstrained"},
    "uniform": {"strategy": "uniform"},
    "random": {"schedule": "one-step", "sampler": "random"},
}


def device_measurements(results: dict) -> int:
    """Candidate measurements the run made on the device (trials measured, plus each round's fine-tuned base)."""
    trials = sum(1 for t in results["trials"] if t.get("latency"))
    probes = len((results["base"].get("quant_probe") or {}).get("measured") or {})
    return trials + len(results["rounds"]) + probes


def paired_ratio(final: dict, metric: str) -> float | None:
    """The final model's value over the original's on the per-pair ratio of the confirmation (the two measured in
    alternating windows in the same minutes): what every method is judged on, whatever the machine's load was."""
    decision = ((final.get("verdict") or {}).get("decisions") or {}).get(metric) or {}
    return decision.get("value") if final.get("met") and decision.get("paired") else None


def run_one(method: str, budget: float, seed: int, args: argparse.Namespace) -> dict:
    rounds = args.rounds if method in ("exponential", "exponential+kd", "linear") else 1
    per_round = max(1, args.measurements // rounds - (1 if rounds > 1 else 0))
    settings = dict(METHODS[method])
    config = TuneConfig(
        example=args.example,
        arch=args.arch,
        budgets=[f"{args.metric}<={budget}x"],
        rounds=rounds,
        trials_per_round=per_round,
        seed=seed,
        # Every method gets the same distillation budget in total: the cooled ones spread it over their rounds.
        finetune_steps=args.finetune_steps * args.rounds // rounds,
        val_limit=args.val_limit,
        runs=args.runs,
        min_seconds=args.min_seconds,
        tradeoff_lambda=args.tradeoff_lambda,
        drift_wait_s=5.0,
        round_to=args.round_to,
        batch=args.batch,
        quant_probe=args.quant_probe,
        name=f"{method}-{budget}-{seed}",
        **settings,
    )
    out = args.out / f"{method}-b{budget}-s{seed}"
    started = time.perf_counter()
    result = run_tune(config, out)
    wall_s = time.perf_counter() - started
    results = json.loads((out / "results.json").read_text())
    final = results.get("final") or {}
    return {
        "method": method,
        "budget": budget,
        "seed": seed,
        "met": bool(final.get("met")),
        "accuracy": final.get("accuracy") if final.get("met") else None,
        "base_accuracy": results["base"]["candidate"]["accuracy"],
        "measurements": device_measurements(results),
        "base_value": results["base"]["values"].get(args.metric),
        "value": (final.get("values") or {}).get(args.metric) if final.get("met") else None,
        "metric": args.metric,
        "ratio": paired_ratio(final, args.metric),
        "wall_s": wall_s,
        "run_dir": str(result.run_dir),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| budget | method | best feasible accuracy (mean ± sd over met seeds) | met | paired ratio of the final "
        "(range) | device measurements | wall time per run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        for method in METHODS:
            group = [r for r in rows if r["budget"] == budget and r["method"] == method]
            if not group:
                continue
            accs = [100 * r["accuracy"] for r in group if r["met"]]
            acc = (
                "—"
                if not accs
                else (
                    f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}"
                    if len(accs) > 1
                    else f"{accs[0]:.2f}"
                )
            )
            ratios = [r["ratio"] for r in group if r.get("ratio") is not None]
            shown = f"{min(ratios):.3f}-{max(ratios):.3f}x" if ratios else "—"
            lines.append(
                f"| {budget}x | {method} | {acc} | {len(accs)}/{len(group)} | {shown} | "
                f"{statistics.fmean(r['measurements'] for r in group):.0f} | "
                f"{statistics.fmean(r['wall_s'] for r in group) / 60:.1f} min |"
            )
    return "\n".join(lines)


def compact(value: object) -> object:
    """A run's results without the raw observations (every latency of every window): what the tables need."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items() if k != "observation"}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def keep(rows: list[dict], folder: Path) -> None:
    """The raw results to commit: rows.jsonl, and per run its results without raw observations and its tune.log."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for row in rows:
        run = Path(row["run_dir"])
        target = folder / run.name
        if target.is_dir() or not run.is_dir():
            continue
        target.mkdir()
        results = json.loads((run / "results.json").read_text())
        (target / "results.json").write_text(json.dumps(compact(results)) + "\n")
        (target / "tune.log").write_text((run / "tune.log").read_text())


def differences(rows: list[dict], method: str, against: str) -> str:
    """Per budget, the method's best feasible accuracy minus the other's on the same seed, where both met it (points,
    mean and range), and on how many seeds; a seed that only one of them met is counted aside."""
    lines = [
        f"| budget | {method} minus {against} (points, same seed, both met) | seeds | only {method} met | "
        f"only {against} met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        by_seed = {
            (r["method"], r["seed"]): r for r in rows if r["budget"] == budget and r["method"] in (method, against)
        }
        seeds = sorted({seed for _, seed in by_seed})
        pairs = [(by_seed.get((method, s)), by_seed.get((against, s))) for s in seeds]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        both = [100 * (a["accuracy"] - b["accuracy"]) for a, b in pairs if a["met"] and b["met"]]
        only_a = sum(1 for a, b in pairs if a["met"] and not b["met"])
        only_b = sum(1 for a, b in pairs if b["met"] and not a["met"])
        shown = f"{statistics.fmean(both):+.2f} ({min(both):+.2f} to {max(both):+.2f})" if both else "—"
        lines.append(f"| {budget}x | {shown} | {len(both)}/{len(pairs)} | {only_a} | {only_b} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    budgets = sorted({r["budget"] for r in rows})
    floor = min((100 * r["accuracy"] for r in rows if r["met"]), default=50.0) - 5
    for index, method in enumerate(m for m in METHODS if any(r["method"] == m for r in rows)):
        color = f"C{index}"
        shift = (index - 2.5) * 0.008  # side by side, not on top of each other
        for budget in budgets:
            group = [r for r in rows if r["method"] == method and r["budget"] == budget]
            accs = [100 * r["accuracy"] for r in group if r["met"]]
            if accs:
                spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
                ax.errorbar(budget + shift, statistics.fmean(accs), yerr=spread, fmt="o", color=color, capsize=3)
            if group:
                ax.annotate(
                    f"{len(accs)}/{len(group)}",
                    (budget + shift, statistics.fmean(accs) if accs else floor),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=color,
                )
                if not accs:
                    ax.plot(budget + shift, floor, "x", color=color)
        ax.plot([], [], "o", color=color, label=method)
    ax.set_xticks(budgets, [f"{b}x" for b in budgets])
    ax.set_xlabel("latency budget (of the original's); x at the bottom: no seed met it; k/n: seeds that met it")
    ax.set_ylabel("best feasible accuracy (%), mean ± sd")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="fashion-mnist")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--metric", default="latency.mean")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.35])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--measurements", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--val-limit", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--tradeoff-lambda", type=float, default=10.0)
    parser.add_argument("--round-to", type=int, default=8, help="channel alignment of pruned layers")
    parser.add_argument("--batch", type=int, default=1, help="inputs per call on the device")
    parser.add_argument("--quant-probe", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("bench-runs/search-quality"))
    parser.add_argument(
        "--aggregate", action="store_true", help="run nothing: the table and plot of the runs rows.jsonl holds"
    )
    parser.add_argument("--keep", type=Path, help="also write rows and compact per-run results here (to commit)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {(r["method"], r["budget"], r["seed"]) for r in rows}
    started = time.perf_counter()
    for budget in [] if args.aggregate else args.budgets:
        for seed in args.seeds:
            for method in args.methods:
                if (method, budget, seed) in done:
                    continue
                row = run_one(method, budget, seed, args)
                rows.append(row)
                with rows_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    if args.keep is not None:
        keep(rows, args.keep)
    print(table(rows))
    methods = {r["method"] for r in rows}
    for against in ("uniform", "one-step"):
        if {"exponential", against} <= methods:
            print()
            print(differences(rows, "exponential", against))
    print(f"\ntotal wall time {(time.perf_counter() - started) / 60:.1f} min")
    plot(rows, args.out / "accuracy_vs_budget.png")


if __name__ == "__main__":
    main()
