"""Which accuracy proxy ranks candidates as the round's full fine-tune would? (docs/benchmarks.md, "Accuracy proxy")

A round's candidates are ranked on a score taken before the round's fine-tune; the candidate chosen is fine-tuned
and becomes the next base. This measures, on random pruning plans of the MobileNetV2-style Fashion-MNIST network, the
Spearman rank correlation between each proxy and the accuracy after the full fine-tune (distillation, as tune does
it), and each proxy's cost per candidate:

- prune only: the pruned weights, BatchNorm statistics as pruning left them;
- adaptive BN (EagleEye): BatchNorm statistics re-estimated on 16 calibration batches (tune's default today);
- adaptive BN + K distillation steps (tune --candidate-finetune-steps K; --base-probe-steps), K = 25 and 50.

One piece per chunk of candidates, resumable (a chunk whose result file exists is skipped):

    python benchmarks/proxy_rank.py run --chunk 0 --out benchmarks/results/proxy-v1     # candidates 0-7
    python benchmarks/proxy_rank.py run --chunk 1 --out benchmarks/results/proxy-v1     # 8-15 ...
    python benchmarks/proxy_rank.py report --out benchmarks/results/proxy-v1

Accuracies are top-1 of the torch model on 1,000 validation images (the proxies and the target alike; export and
quantization do not enter the ranking question).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from edgecompress.compress import CompressionPlan, finetune, search_space
from edgecompress.compress._prune import prune, recalibrate_batchnorm
from edgecompress.workload import load_workload

CHUNK = 8
FULL_STEPS = 200  # the round's fine-tune: tune --finetune-steps, 200 by default
SHORT = (25, 50)
MAX_RATIO, STEP = 0.8, 0.05


def accuracy(model: torch.nn.Module, workload) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for inputs, labels in workload.val:
            right += int((model(inputs).argmax(1) == labels).sum())
            total += len(labels)
    return right / total


def plans(count: int, dimensions: tuple[str, ...], seed: int = 0) -> list[CompressionPlan]:
    """Random plans over the space tune searches (a ratio per dimension on the 0.05 grid up to 0.8)."""
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        scale = rng.uniform(0.2, 1.0)  # spread the mean ratio: a few light plans, a few heavy ones
        ratios = {d: round(round(rng.uniform(0, MAX_RATIO * scale) / STEP) * STEP, 2) for d in dimensions}
        found.append(CompressionPlan(ratios={d: r for d, r in ratios.items() if r > 0}, quant="fp32", round_to=8))
    return found


def run_chunk(chunk: int, out: Path) -> None:
    piece = out / f"chunk-{chunk}.json"
    if piece.exists():
        print(f"chunk {chunk}: done already ({piece})")
        return
    torch.manual_seed(0)
    workload = load_workload(example="fashion-mnist", arch="mobilenetv2", val_limit=1000)
    original = workload.build_model().eval()
    space = search_space(original, workload.input_shape, workload.ignore)  # 10 groups: tune does not coarsen
    records = []
    for index, plan in enumerate(plans(CHUNK * (chunk + 1), space.dimensions)[CHUNK * chunk :], CHUNK * chunk):
        record: dict = {"index": index, "ratios": dict(plan.ratios)}
        t0 = time.perf_counter()
        pruned = prune(copy.deepcopy(original).eval(), plan, space, workload.input_shape)
        record["prune_s"] = time.perf_counter() - t0
        record["prune only"] = accuracy(copy.deepcopy(pruned), workload)
        t0 = time.perf_counter()
        recalibrated = recalibrate_batchnorm(copy.deepcopy(pruned), workload.calib)
        record["adaptive BN_s"] = record["prune_s"] + time.perf_counter() - t0
        record["adaptive BN"] = accuracy(recalibrated, workload)
        for steps in SHORT:
            t0 = time.perf_counter()
            tuned = finetune(recalibrated, original, workload, steps=steps)
            record[f"adaptive BN + {steps} steps_s"] = record["adaptive BN_s"] + time.perf_counter() - t0
            record[f"adaptive BN + {steps} steps"] = accuracy(tuned, workload)
        t0 = time.perf_counter()
        record["after fine-tune"] = accuracy(finetune(recalibrated, original, workload, steps=FULL_STEPS), workload)
        record["fine-tune_s"] = time.perf_counter() - t0
        print(json.dumps(record))
        records.append(record)
    out.mkdir(parents=True, exist_ok=True)
    piece.write_text(json.dumps(records, indent=2))


def report(out: Path) -> None:
    records = [r for p in sorted(out.glob("chunk-*.json")) for r in json.loads(p.read_text())]
    target = np.array([r["after fine-tune"] for r in records])
    spread = f"{target.min():.3f}-{target.max():.3f}"
    print(f"{len(records)} candidates; accuracy after {FULL_STEPS} distillation steps: {spread}")
    print("| proxy | Spearman rho with the accuracy after fine-tuning | seconds per candidate | rho per second |")
    print("| --- | --- | --- | --- |")
    for proxy in ("prune only", "adaptive BN", *(f"adaptive BN + {k} steps" for k in SHORT)):
        scores = np.array([r[proxy] for r in records])
        rho = float(spearmanr(scores, target).statistic)
        cost = statistics.fmean(r.get(f"{proxy}_s", r["prune_s"]) for r in records)
        print(f"| {proxy} | {rho:.2f} | {cost:.2f} | {rho / cost:.2f} |")
    # The choice a round makes: does the proxy's best of a round-sized sample (12) end near the true best?
    rng = np.random.default_rng(0)
    for proxy in ("adaptive BN", *(f"adaptive BN + {k} steps" for k in SHORT)):
        scores = np.array([r[proxy] for r in records])
        regret = []
        for _ in range(2000):
            pick = rng.choice(len(records), size=min(12, len(records)), replace=False)
            regret.append(target[pick].max() - target[pick[np.argmax(scores[pick])]])
        print(f"{proxy}: a round of 12 picks a candidate {100 * np.mean(regret):.2f} points below its best on average")
    # The base choice (tune --base-choice short-finetune): the top 3 of a round by the search's score (adaptive BN),
    # each fine-tuned K steps, the best of those kept; against keeping the top 1 by the score.
    score = np.array([r["adaptive BN"] for r in records])
    for steps in SHORT:
        probe = np.array([r[f"adaptive BN + {steps} steps"] for r in records])
        regret = []
        for _ in range(2000):
            pick = rng.choice(len(records), size=min(12, len(records)), replace=False)
            top = pick[np.argsort(-score[pick])[:3]]
            regret.append(target[pick].max() - target[top[np.argmax(probe[top])]])
        print(
            f"top 3 by adaptive BN, then the best after {steps} steps: {100 * np.mean(regret):.2f} points below the "
            f"round's best on average (cost: 3 x {steps} steps a round)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--chunk", type=int, required=True)
    run.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run_chunk(args.chunk, args.out)
    else:
        report(args.out)


if __name__ == "__main__":
    main()
