"""Does a search's "met" hold when the same structure is measured again? Reads tune run folders, no device.

    python benchmarks/met_holds.py bench-runs/sq-accept-v3 [MORE_FOLDERS] [--json OUT]

Each round of a tune run chooses a trial its search measured feasible, fine-tunes it (other weights, the same
layers, so the same latency) and measures it again with the confirmation's windows (`rounds[].base_verdict`). This
pairs the two verdicts on one budget's metric for every round of every run under the folders, and counts how often
the re-measurement is met, by the number of windows the search's "met" took: a verdict from few windows on a noisy
device is where a selection on a lucky measurement would show.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any


def paired_verdicts(run_dir: Path, key: str) -> list[dict[str, Any]]:
    """One row per round of the run in ``run_dir``: the chosen trial's search decision and its base's re-measurement."""
    results = json.loads((run_dir / "results.json").read_text())
    trials = {(t["round"], t["number"]): t for t in results["trials"]}
    rows = []
    for entry in results.get("rounds", []):
        chosen = trials.get((entry["round"], entry.get("chosen_trial")))
        search = ((chosen or {}).get("decisions") or {}).get(key)
        again = ((entry.get("base_verdict") or {}).get("decisions") or {}).get(key)
        if search is None or again is None:
            continue
        rows.append(
            {
                "run": run_dir.name,
                "round": entry["round"],
                "threshold": search["threshold"],
                "search": {k: search[k] for k in ("outcome", "value", "upper", "windows")},
                "again": {k: again[k] for k in ("outcome", "value", "upper", "windows")},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders holding tune run folders (results.json)")
    parser.add_argument("--key", default="latency.p50", help="the budget's metric")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = [
        row
        for folder in args.folders
        for results in sorted(folder.glob("*/results.json"))
        for row in paired_verdicts(results.parent, args.key)
    ]
    met = [r for r in rows if r["search"]["outcome"] == "met"]
    if not met:
        raise SystemExit("no round chose a trial its search measured met")
    print("| search's met from | rounds | met again | inconclusive | violated | median ratio again / search |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, chosen in (
        ("2 windows", [r for r in met if r["search"]["windows"] <= 2]),
        ("3 or more windows", [r for r in met if r["search"]["windows"] >= 3]),
        ("all", met),
    ):
        if not chosen:
            continue
        outcomes = Counter(r["again"]["outcome"] for r in chosen)
        drift = median(r["again"]["value"] / r["search"]["value"] for r in chosen)
        print(
            f"| {label} | {len(chosen)} | {outcomes['met']} | {outcomes['inconclusive']} | {outcomes['violated']} "
            f"| {drift:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
