"""Do tune's "met" and check's verdict agree on a noisy device? (docs/benchmarks.md, "Verdicts on a noisy device")

One piece per seed, resumable (a piece whose result file exists is skipped); each piece starts its own noisy SSH
device (an sshd inside a cgroup CPU quota, benchmarks/_noisy_device.py), runs `tune` on the MobileNetV2-style
Fashion-MNIST network with a p50 (relative, paired), a p99 and a pWCET budget, then re-checks the final model
`--checks` times with `edgecompress check --config RUN/check.toml`. The first piece fixes the absolute budgets from
a `bench` of the original on that device (budgets.json), so every seed is judged against the same limits.

    python benchmarks/verdict_agreement.py run --seed 0 --out bench-runs/verdicts-v2
    python benchmarks/verdict_agreement.py report --out bench-runs/verdicts-v2

For each check it also records the verdict today's rule (before windows) would have given: the first window alone,
value <= limit. The report gives, over all checks: agreement of tune's verdict with check's, false "met" (tune met,
check violated), the max/min ratio of the pWCET estimates of one model over its checks, and the device time of
tune's confirmation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _noisy_device import noisy_device  # noqa: E402

WORKLOAD = ["--example", "fashion-mnist", "--arch", "mobilenetv2"]
PWCET = "latency.pwcet@1e-06"


def edgecompress(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env)


def budgets_for(out: Path, profile: Path, env: dict[str, str], original: Path) -> dict[str, float]:
    path = out / "budgets.json"
    if path.exists():
        return json.loads(path.read_text())
    done = edgecompress("bench", str(original), "--device", str(profile), "--runs", "500", "--json", env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench of the original failed: {done.stderr}")
    bench = json.loads(done.stdout)
    budgets = {
        "latency.p99": 0.8 * bench["latency"]["p99_ms"],
        PWCET: 0.9 * bench["tail"]["pwcet_ms"]["1e-06"],
        "original_p50_ms": bench["latency"]["p50_ms"],
        "original_pwcet_method": bench["tail"]["method"],
    }
    path.write_text(json.dumps(budgets, indent=2))
    return budgets


def export_original(path: Path) -> Path:
    if not path.exists():
        from edgecompress.compress import CompressionPlan, build_artifact, search_space  # noqa: F401
        from edgecompress.workload import load_workload

        workload = load_workload(example="fashion-mnist", arch="mobilenetv2", val_limit=200)
        model = workload.build_model().eval()
        artifact = build_artifact(model, CompressionPlan(), workload, opset=17)
        path.parent.mkdir(parents=True, exist_ok=True)
        artifact.write(path)
    return path


def single_window(check: dict, targets: dict[str, float]) -> bool:
    """Today's rule on this check's first window: every device budget's value <= its limit."""
    windows = check["extra"]["observation"]["details"].get("windows", {}).get("values", {})
    return all(values and values[0] is not None and values[0] <= targets[key] for key, values in windows.items())


def run_piece(seed: int, out: Path, checks: int) -> None:
    piece = out / f"seed-{seed}.json"
    if piece.exists():
        print(f"seed {seed}: done already ({piece})")
        return
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(out / "cache"), COLUMNS="200")
    original = export_original(out / "original.onnx")
    with noisy_device(out / f"device-{seed}") as profile:
        budgets = budgets_for(out, profile, env, original)
        texts = [
            "latency.p50<=0.7x",
            f"latency.p99<={budgets['latency.p99']:.4f}ms",
            f"{PWCET}<={budgets[PWCET]:.4f}ms",
        ]
        run = out / f"run-{seed}"
        started = time.monotonic()
        tune_args = [
            "tune",
            *WORKLOAD,
            "--device",
            str(profile),
            *[a for t in texts for a in ("--budget", t)],
            "--rounds",
            "2",
            "--trials-per-round",
            "3",
            "--finetune-steps",
            "50",
            "--val-limit",
            "500",
            "--runs",
            "500",
            "--min-seconds",
            "0",
            "--no-quant-probe",
            "--seed",
            str(seed),
            "--out",
            str(run),
        ]
        tuned = edgecompress(*tune_args, env=env)
        tune_s = time.monotonic() - started
        if tuned.returncode not in (0, 1):
            raise SystemExit(f"tune exited {tuned.returncode}: {tuned.stderr[-2000:]}")
        results = json.loads((run / "results.json").read_text())
        final = results["final"]
        record: dict = {"seed": seed, "budgets": texts, "tune_s": tune_s, "tune_met": final["met"], "checks": []}
        record["tune_outcome"] = "met" if final["met"] else final.get("outcome")
        if final["met"]:
            windows = final["observation"]["details"].get("windows", {})
            record["confirmation_s"] = windows.get("seconds")
            record["confirmation_windows"] = windows.get("count")
            record["tune_decisions"] = final["verdict"]["decisions"]
            judged = run / "model.onnx"
        else:
            # No answer: check the model tune rejected last (the last round's fine-tuned base), which check should
            # not call met either.
            judged = run / f"round-{len(results['rounds']) - 1}" / "model.onnx"
        record["checked"] = str(judged.relative_to(run))
        targets = results["base"]["targets"]
        for index in range(checks):
            result_path = run / f"check-{index}.json"
            done = edgecompress(
                "check",
                str(judged),
                "--config",
                str(run / "check.toml"),
                "--json",
                str(result_path),
                env=env,
            )
            if not result_path.exists():
                raise SystemExit(f"check exited {done.returncode}: {done.stderr[-2000:]}")
            check = json.loads(result_path.read_text())
            budgets_out = {b["key"]: b["status"] for b in check["budgets"]}
            record["checks"].append(
                {
                    "exit": done.returncode,
                    "statuses": budgets_out,
                    "pwcet_ms": check["values"].get(PWCET),
                    "pwcet_method": (check["extra"]["observation"].get("tail") or {}).get("method"),
                    "windows": check["extra"]["observation"]["details"].get("windows", {}).get("count"),
                    "single_window_met": single_window(check, targets),
                }
            )
            print(f"seed {seed} check {index}: exit {done.returncode} {budgets_out}", flush=True)
    piece.write_text(json.dumps(record, indent=2))
    print(f"seed {seed}: tune {record['tune_outcome']} in {tune_s:.0f} s; {len(record['checks'])} checks", flush=True)


def report(out: Path) -> None:
    pieces = [json.loads(p.read_text()) for p in sorted(out.glob("seed-*.json"))]
    rows, agree, false_met, total, met_checks = [], 0, 0, 0, 0
    single_false, single_met_checks = 0, 0
    for piece in pieces:
        checks = piece["checks"]
        if not checks:
            rows.append(f"| {piece['seed']} | {piece['tune_outcome']} | - | - | - | - | - |")
            continue
        outcomes = []
        tune_met = piece["tune_outcome"] == "met"
        for c in checks:
            statuses = set(c["statuses"].values())
            outcome = "violated" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "met"
            outcomes.append(outcome)
            total += 1
            # Agreement: check does not contradict tune (met vs violated, or not met vs met).
            agree += (outcome != "violated") if tune_met else (outcome != "met")
            if tune_met:
                met_checks += 1
                false_met += outcome == "violated"
            # Today's rule on the same check: its first window alone.
            if c["single_window_met"]:
                single_met_checks += 1
                single_false += outcome == "violated"
        pwcets = [c["pwcet_ms"] for c in checks if c["pwcet_ms"]]
        ratio = max(pwcets) / min(pwcets) if pwcets else float("nan")
        # The value the verdict used: the median window's pWCET of each check (from the check files, when kept).
        medians = []
        for index in range(len(checks)):
            path = out / f"run-{piece['seed']}" / f"check-{index}.json"
            if path.exists():
                budget = next(b for b in json.loads(path.read_text())["budgets"] if b["key"] == PWCET)
                medians += [budget["value"]] if budget["value"] else []
        median_ratio = max(medians) / min(medians) if medians else float("nan")
        methods = sorted({c["pwcet_method"] for c in checks})
        rows.append(
            f"| {piece['seed']} | {piece['tune_outcome']} | {outcomes.count('met')}/{outcomes.count('inconclusive')}/"
            f"{outcomes.count('violated')} | {ratio:.2f} ({', '.join(methods)}); median window {median_ratio:.2f} | "
            f"{piece.get('confirmation_s', 0):.1f} s, {piece.get('confirmation_windows')} windows | "
            f"{sum(c['single_window_met'] for c in checks)}/{len(checks)} | {piece['tune_s'] / 60:.1f} min |"
        )
    print(
        "| seed | tune | check met/inconclusive/violated | pWCET max/min over checks: pooled (estimator); "
        "median window | confirmation | single-window 'met' | tune time |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if total:
        print(f"\nagreement: check did not contradict tune's verdict in {agree}/{total} checks ({agree / total:.0%})")
    if met_checks:
        print(f"false met: {false_met}/{met_checks} checks of models tune called met were violated")
    if single_met_checks:
        print(
            f"single window (the rule before windows), on the same checks: {single_met_checks} first windows said "
            f"met, {single_false} of them on a check whose windows showed a violation"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("run", "report"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench-runs/verdicts-v2"))
    args = parser.parse_args()
    if args.what == "run":
        run_piece(args.seed, args.out, args.checks)
    else:
        report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
