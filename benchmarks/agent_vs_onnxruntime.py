"""Does the agent measure what a plain onnxruntime loop measures? ResNet-18 (224x224), side by side, one run.

    python benchmarks/agent_vs_onnxruntime.py [--rounds 5] [--runs 50] [--threads 2]

Alternates an `edgecompress` local-device measurement and a plain onnxruntime loop in this process, so both see
the same machine state, and reports the ratio of means per round and overall.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

from edgecompress.analysis import latency_stats
from edgecompress.device import LocalTransport, MeasureRequest, Session
from edgecompress.zoo import resnet18


def export_resnet18() -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        resnet18(),
        (torch.randn(1, 3, 224, 224),),
        buffer,
        opset_version=17,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
    )
    return buffer.getvalue()


def plain_loop(path: str, threads: int, runs: int, warmup: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(warmup):
        session.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        session.run(None, {"input": x})
        times.append(time.perf_counter_ns() - t0)
    return statistics.fmean(times) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    data = export_resnet18()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/resnet18.onnx"
        with open(path, "wb") as handle:
            handle.write(data)
        session = Session(LocalTransport(cache_dir=f"{tmp}/cache"))
        sha = session.put_model(data)
        spec = MeasureRequest(
            runs=args.runs, min_seconds=0, warmup_runs=args.warmup, warmup_seconds=0, threads=args.threads
        )
        print(f"ResNet-18 224x224, {len(data) / 1e6:.1f} MB, {args.threads} threads, {args.runs} runs per side")
        print(f"{'round':>5} {'agent mean ms':>14} {'plain mean ms':>14} {'ratio':>7}")
        ratios, agent_means, plain_means = [], [], []
        for round_index in range(args.rounds):
            agent_ms = latency_stats(session.measure(sha, spec)).mean_ms
            plain_ms = plain_loop(path, args.threads, args.runs, args.warmup)
            ratios.append(agent_ms / plain_ms)
            agent_means.append(agent_ms)
            plain_means.append(plain_ms)
            print(f"{round_index:>5} {agent_ms:>14.2f} {plain_ms:>14.2f} {ratios[-1]:>7.3f}")
        session.close()
    overall = statistics.fmean(agent_means) / statistics.fmean(plain_means)
    print(
        f"ratio of means (agent / plain): {overall:.3f}; per-round median {statistics.median(ratios):.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f}"
    )
    for label, means in (("agent", agent_means), ("plain", plain_means)):
        median = statistics.median(means)
        spread = (max(means) - min(means)) / median
        print(
            f"{label}: median of {len(means)} means {median:.2f} ms, range {min(means):.2f}-{max(means):.2f} ms "
            f"({100 * spread:.0f}% of the median), coefficient of variation "
            f"{100 * statistics.stdev(means) / statistics.fmean(means):.1f}%"
        )


if __name__ == "__main__":
    main()
