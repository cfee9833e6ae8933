"""python3 -m edgecompress_agent {serve,info,bench}"""

import argparse
import json
import os
import sys

from . import __version__, housekeeping, runtimes, system
from .server import Agent, default_cache_dir


def _serve(args):
    # Frames own the real stdout; anything a library prints goes to stderr instead of corrupting them.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = os.fdopen(os.dup(0), "rb")
    housekeeping.sweep(args.cache_dir)
    agent = Agent(inp, out, cache_dir=args.cache_dir, cache_max_bytes=int(args.cache_max_mb * 1024 * 1024),
                  sysfs_root=args.sysfs_root)
    try:
        return agent.serve()
    finally:
        housekeeping.forget_pid(args.cache_dir)


def _info(args):
    agent = Agent(None, None, cache_dir=args.cache_dir, sysfs_root=args.sysfs_root)
    print(json.dumps(agent.hello({}, b""), indent=2, sort_keys=True))
    return 0


def _percentile(ordered, q):
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _bench(args):
    from . import measure
    runner = runtimes.load(args.model, args.runtime, args.threads)
    feeds = runtimes.random_inputs(runner)
    latencies, _, _ = measure.timed_runs(lambda: runner.run(feeds), args.warmup_runs, 0.5, args.runs,
                                         args.min_seconds, args.max_seconds)
    ms = sorted(x / 1e6 for x in latencies)
    print("{} on {} ({} runs)".format(os.path.basename(args.model), system.board(), len(ms)))
    for name, q in (("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        print("  {:<5} {:10.3f} ms".format(name, _percentile(ms, q)))
    print("  mean  {:10.3f} ms".format(sum(ms) / len(ms)))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="edgecompress_agent", description="edgecompress device agent " + __version__)
    parser.add_argument("--cache-dir", default=default_cache_dir(), help="where models are cached")
    parser.add_argument("--cache-max-mb", type=float, default=2048.0, help="bound on the model cache")
    parser.add_argument("--sysfs-root", default="/", help="root of /sys and /proc (for fixture trees)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve framed requests on stdin/stdout")
    sub.add_parser("info", help="print what hello reports")
    bench = sub.add_parser("bench", help="time a model here, by hand")
    bench.add_argument("model")
    bench.add_argument("--runtime", default="onnxruntime", choices=runtimes.RUNTIMES)
    bench.add_argument("--threads", type=int, default=None)
    bench.add_argument("--runs", type=int, default=100)
    bench.add_argument("--warmup-runs", type=int, default=10)
    bench.add_argument("--min-seconds", type=float, default=1.0)
    bench.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "info":
        return _info(args)
    if args.command == "bench":
        try:
            return _bench(args)
        except Exception as exc:
            sys.stderr.write("edgecompress_agent: {}\n".format(exc))
            return 1
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
