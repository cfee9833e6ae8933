"""Measured speedup at <= 1 point accuracy drop: every method's final models against int8 alone.

    python benchmarks/speedup_at_accuracy.py bench-runs/search-quality [MORE_FOLDERS] [--max-drop 1.0] [--repeats 3]

Reads the runs that `search_quality.py` output folders hold (rows.jsonl and each run's folder; the same network,
batch and validation images in all). In one session on the
local device it measures, round-robin so that all see the same machine state: the original fp32 model, the original
in int8 (no pruning), and the final model of every run that met its budget. A model's latency is the median of its
p50s over the repeats, at the runs' batch size. Accuracy is each run's own (host, onnxruntime, the deployed bytes, the
same validation images for all). For each method it prints the fastest model whose accuracy is within --max-drop
points of the original's, and its speedup over the original measured in this session.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _roundrobin import round_robin_p50s

from edgecompress.budgets import accuracy_drop_points
from edgecompress.compress import MIN_OPSET, CompressionPlan, search_space
from edgecompress.config import TuneConfig, resolve_device
from edgecompress.device import open_session
from edgecompress.device._runtime import onnx_opset
from edgecompress.search import tune_measure_request
from edgecompress.search._candidate import build_candidate
from edgecompress.workload import load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="+", help="search_quality.py output folders")
    parser.add_argument("--max-drop", type=float, default=1.0, help="accuracy points")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [json.loads(line) for out in args.out for line in (out / "rows.jsonl").read_text().splitlines()]
    met = [r for r in rows if r["met"]]
    if not met:
        raise SystemExit("no run met its budget; nothing to compare")
    if len({r["base_accuracy"] for r in rows}) > 1:
        raise SystemExit("the folders hold runs of different originals or validation sets; compare like with like")
    first = Path(met[0]["run_dir"])
    results = json.loads((first / "results.json").read_text())
    config = TuneConfig.model_validate(results["config"])
    base_accuracy = results["base"]["candidate"]["accuracy"]
    workload = load_workload(example=config.example, arch=config.arch, val_limit=config.val_limit)
    original = workload.build_model().eval()
    space = search_space(original, workload.input_shape, workload.ignore)
    original_bytes = (first / "original.onnx").read_bytes()
    opset = onnx_opset(original_bytes) or MIN_OPSET
    _, int8 = build_candidate(
        original, CompressionPlan(quant="int8"), workload, space, opset, config.val_limit, model=original
    )
    models: dict[str, tuple[str, float, bytes]] = {
        "original fp32": ("original", base_accuracy, original_bytes),
        "original int8": ("int8 alone", int8.accuracy, int8.artifact.data),
    }
    for r in met:
        run = Path(r["run_dir"])
        models[f"{r['method']} b{r['budget']} s{r['seed']} ({run.parent.name})"] = (
            r["method"],
            r["accuracy"],
            (run / "model.onnx").read_bytes(),
        )
    profile = resolve_device(config.device)
    spec = tune_measure_request(profile, config, workload.input_shape)
    with open_session(profile) as session:
        shas = {name: session.put_model(data) for name, (_, _, data) in models.items()}
        p50s = round_robin_p50s(session, shas, spec, args.repeats)
    latency = {name: statistics.median(values) for name, values in p50s.items()}
    reference = latency["original fp32"]
    print(f"original fp32: accuracy {100 * base_accuracy:.2f}%, p50 {reference:.3f} ms (batch {config.batch})\n")
    print(
        f"| method | runs within {args.max_drop:g} pt | best speedup within {args.max_drop:g} pt | its accuracy | "
        "its p50 | fastest of all runs (accuracy) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for method in dict.fromkeys(kind for kind, _, _ in models.values() if kind != "original"):
        names = [n for n, (kind, _, _) in models.items() if kind == method]
        within = [n for n in names if accuracy_drop_points(base_accuracy, models[n][1]) <= args.max_drop]
        fastest = min(names, key=lambda n: latency[n])
        overall = f"{reference / latency[fastest]:.2f}x ({100 * models[fastest][1]:.2f}%)"
        if within:
            best = min(within, key=lambda n: latency[n])
            print(
                f"| {method} | {len(within)}/{len(names)} | {reference / latency[best]:.2f}x | "
                f"{100 * models[best][1]:.2f}% | {latency[best]:.3f} ms | {overall} |"
            )
        else:
            print(f"| {method} | 0/{len(names)} | — | — | — | {overall} |")
    print("\nper model (median p50 over the repeats):")
    for name, value in sorted(latency.items(), key=lambda item: item[1]):
        print(f"  {name:<48} {value:.3f} ms  {reference / value:.2f}x  accuracy {100 * models[name][1]:.2f}%")


if __name__ == "__main__":
    main()
