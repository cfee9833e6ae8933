"""The request loop: one framed request in, one framed answer out, until ``bye`` or end of input."""

import json
import math
import os
import sys
import time
import traceback

from . import PROTOCOL_VERSION, __version__, measure, power, runtimes, system, thermal
from .cache import ModelCache, check_sha256
from .protocol import FrameError, ProtocolError, read_frame, write_frame

PROTOCOLS = (PROTOCOL_VERSION,)
_NUMBER = (int, float)


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edgecompress")


def _field(header, key, kinds, default=None, required=False, low=None, high=None):
    """One request field, type- and range-checked; a FrameError names what is wrong."""
    if key not in header or header[key] is None:
        if required:
            raise FrameError("request lacks {!r}".format(key))
        return default
    value = header[key]
    if isinstance(value, bool) and bool not in kinds:
        raise FrameError("{!r} must be {}, got a boolean".format(key, "/".join(k.__name__ for k in kinds)))
    if not isinstance(value, kinds):
        raise FrameError("{!r} must be {}, got {}".format(key, "/".join(k.__name__ for k in kinds), type(value).__name__))
    if isinstance(value, float) and not math.isfinite(value):  # json.loads reads NaN and Infinity
        raise FrameError("{!r} must be a finite number, got {}".format(key, value))
    if low is not None and value < low or high is not None and value > high:
        raise FrameError("{!r} = {} is outside [{}, {}]".format(key, value, low, high))
    return value


def _str_list(header, key):
    value = _field(header, key, (list,))
    if value is not None and not all(isinstance(v, str) for v in value):
        raise FrameError("{!r} must be a list of strings".format(key))
    return value


class Agent(object):
    """Serves requests from ``inp`` to ``out`` (binary streams)."""

    def __init__(self, inp, out, cache_dir=None, cache_max_bytes=2 * 1024 ** 3, sysfs_root="/"):
        self.inp = inp
        self.out = out
        self.cache_dir = cache_dir or default_cache_dir()
        self.cache = ModelCache(os.path.join(self.cache_dir, "models"), cache_max_bytes)
        self.root = sysfs_root
        self.running = True
        self._validating = None  # (request key, runner) of the last validate request
        self.handlers = {
            "hello": self.hello, "has_model": self.has_model, "put_model": self.put_model,
            "measure": self.measure, "validate": self.validate, "bye": self.bye,
        }

    def serve(self):
        """Answer until ``bye``, end of input, or a stream that cannot be resynchronised."""
        while self.running:
            try:
                frame = read_frame(self.inp)
            except FrameError as exc:
                self._send_error(None, "bad_request", str(exc))
                continue
            except ProtocolError as exc:
                self._send_error(None, "protocol", str(exc) + "; closing")
                return 1
            if frame is None:
                return 0
            self._dispatch(*frame)
        return 0

    def _dispatch(self, header, payload):
        request_id = header.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, (int, str, type(None))):
            request_id = None
        op = header.get("op")
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            self._send_error(request_id, "unknown_request",
                             "unknown op {!r}; known: {}".format(op, ", ".join(sorted(self.handlers))))
            return
        try:
            result = handler(header, payload)
        except FrameError as exc:
            self._send_error(request_id, exc.kind, str(exc))
            return
        except MemoryError:
            self._send_error(request_id, "MemoryError", "out of memory while serving {!r}".format(op))
            return
        except Exception as exc:  # the agent keeps serving; the host sees the reason
            traceback.print_exc(file=sys.stderr)
            self._send_error(request_id, "internal", "{}: {}".format(type(exc).__name__, exc))
            return
        payload_out = None
        if isinstance(result, tuple):
            result, payload_out = result
        write_frame(self.out, {"id": request_id, "ok": True, "result": result}, payload_out)

    def _send_error(self, request_id, kind, message):
        try:
            write_frame(self.out, {"id": request_id, "ok": False, "error": {"type": kind, "message": message}})
        except (IOError, OSError):
            self.running = False

    # -- requests -------------------------------------------------------------------------------------------

    def hello(self, header, payload):
        wanted = _field(header, "protocol", (list,), default=[PROTOCOL_VERSION])
        common = [v for v in PROTOCOLS if v in wanted]
        if not common:
            raise FrameError("host speaks protocol {}, agent {} speaks {}".format(wanted, __version__, list(PROTOCOLS)))
        info = {
            "agent_version": __version__, "protocol": max(common), "pid": os.getpid(),
            "python": system.python_info(), "board": system.board(self.root), "l4t": system.l4t_release(self.root),
            "cpu": system.cpu(self.root), "memory": system.memory(self.root),
            "thermal_zones": system.thermal_zones(self.root), "cpufreq": system.cpufreq(self.root),
            "cache_dir": self.cache_dir, "power_sources": power.detect(self.root),
        }
        info.update(runtimes.detect())
        return info

    def has_model(self, header, payload):
        cached, received = self.cache.status(check_sha256(header.get("sha256")))
        return {"cached": cached, "received": received}

    def put_model(self, header, payload):
        sha = check_sha256(header.get("sha256"))
        size = _field(header, "size", (int,), required=True, low=0)
        offset = _field(header, "offset", (int,), default=0, low=0)
        complete, received = self.cache.write_chunk(sha, size, offset, payload)
        return {"complete": complete, "received": received}

    def _runner(self, header, affinity=None):
        sha = check_sha256(header.get("sha256"))
        cached, _ = self.cache.status(sha)
        if not cached:
            raise FrameError("model {} is not in the agent's cache; put_model it first".format(sha[:12]))
        runtime = _field(header, "runtime", (str,), default="onnxruntime")
        threads = _field(header, "threads", (int,), low=1, high=1024)
        if threads is None and affinity:
            threads = runtimes.default_threads(affinity)  # one thread per physical core pinned to
        providers = _str_list(header, "providers")
        t0 = measure.now_ns()
        runner = runtimes.load(self.cache.path(sha), runtime, threads, providers)
        return runner, measure.now_ns() - t0

    def measure(self, header, payload):
        runs = _field(header, "runs", (int,), default=100, low=1, high=measure.MAX_RUNS)
        warmup_runs = _field(header, "warmup_runs", (int,), default=10, low=0, high=100000)
        warmup_seconds = _field(header, "warmup_seconds", _NUMBER, default=0.5, low=0, high=3600)
        min_seconds = _field(header, "min_seconds", _NUMBER, default=1.0, low=0, high=3600)
        max_seconds = _field(header, "max_seconds", _NUMBER, default=60.0, low=0, high=24 * 3600)
        affinity = _field(header, "affinity", (list,))
        if affinity is not None and not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in affinity):
            raise FrameError("'affinity' must be a list of CPU numbers")
        shapes = _field(header, "input_shapes", (dict,))
        heat = self._heat_fields(header)
        reader = self._power_reader(header)
        idle_seconds = _field(header, "idle_seconds", _NUMBER, default=0.5, low=0, high=60)
        interval = _field(header, "power_interval_s", _NUMBER, default=0.01, low=0.001, high=10)
        runner, load_ns = self._runner(header, affinity)
        feeds = runtimes.random_inputs(runner, shapes)
        started = time.time()
        first = [None]

        def attempt(cool_wait):
            """Cool-down wait, idle power, then the timed runs with power sampled alongside."""
            before = thermal.state(self.root)
            before["wait"] = cool_wait
            idle_trace, idle_w = power.idle_reading(reader, idle_seconds, interval) if reader else (None, None)
            sampler = power.Sampler(reader, interval).start() if reader else None
            try:
                with measure.Affinity(affinity):
                    if first[0] is None:
                        t0 = measure.now_ns()
                        try:
                            runner.run(feeds)
                        except Exception as exc:  # inputs the model refuses (input_shapes): the request's fault
                            raise FrameError("inference fails on inputs of shape {}: {}".format(
                                dict((k, list(v.shape)) for k, v in feeds.items()), runtimes._short(exc)))
                        first[0] = measure.now_ns() - t0
                    latencies, warm_done, wall_ns = measure.timed_runs(
                        lambda: runner.run(feeds), warmup_runs, warmup_seconds, runs, min_seconds, max_seconds)
                    window_end = measure.now_ns()
            finally:  # a failed request leaves no sampler thread behind
                trace = sampler.stop() if sampler else None
            after = thermal.state(self.root)
            return {"latencies_ns": latencies, "warmup_runs": warm_done, "window_ns": wall_ns,
                    "window_start_ns": window_end - wall_ns, "window_end_ns": window_end,
                    "power_trace": trace, "idle_power_w": idle_w, "idle_trace": idle_trace,
                    "before": before, "after": after, "throttled": thermal.throttled_during(before, after)}

        result = attempt(self._cool(heat, False))
        if result["throttled"] and heat["repeat_if_throttled"]:
            # Once, after a cool-down: a throttled window measures the heat, not the model.
            discarded = dict((k, result[k]) for k in ("before", "after", "window_ns"))
            discarded["runs"] = len(result["latencies_ns"])
            result = attempt(self._cool(heat, True))
            result["repeated"] = {"reason": "throttled", "discarded": discarded}
        result.update({
            "load_ns": load_ns, "first_inference_ns": first[0], "started_unix": started,
            "providers": runner.providers, "threads": runner.threads, "inputs": runner.inputs,
            "affinity": affinity,
            "input_shapes": dict((name, list(array.shape)) for name, array in feeds.items()),
            "power_source": reader.describe() if reader else None,
        })
        return result

    def _heat_fields(self, header):
        return {
            "start_temp_c": _field(header, "start_temp_c", _NUMBER, low=-50, high=150),
            "max_wait_s": _field(header, "max_wait_s", _NUMBER, default=120.0, low=0, high=3600),
            "repeat_if_throttled": _field(header, "repeat_if_throttled", (bool,), default=True),
        }

    def _cool(self, heat, after_throttling):
        """Wait until cool (and, before a repeat, until throttling stops), bounded; None when there is no reason."""
        if heat["start_temp_c"] is None and not after_throttling:
            return None
        return thermal.wait_until_cool(self.root, heat["start_temp_c"], heat["max_wait_s"],
                                       need_unthrottled=after_throttling)

    def _power_reader(self, header):
        if not _field(header, "power", (bool,), default=True):
            return None
        source = _field(header, "power_source", (str,), default="auto")
        command = _field(header, "power_command", (str,))
        try:
            return power.open_source(self.root, source, command)
        except power.PowerError as exc:
            raise FrameError(str(exc))

    def validate(self, header, payload):
        specs = _field(header, "inputs", (list,), required=True)
        batch = _field(header, "batch", (int,), low=1, high=1 << 20)
        runner = self._validation_runner(header)
        feeds = runtimes.decode_arrays(specs, payload)
        expected = set(i["name"] for i in runner.inputs)
        if set(feeds) != expected:
            raise FrameError("inputs {} do not match the model's {}".format(sorted(feeds), sorted(expected)))
        outputs = runtimes.run_batches(runner, feeds, batch)
        out_specs, data = runtimes.encode_arrays(list(zip(runner.outputs, outputs)))
        return {"outputs": out_specs, "providers": runner.providers}, data

    def _validation_runner(self, header):
        """The runner for a validate request: loaded once for a run of validate requests on the same model and
        settings (a TensorRT engine takes minutes to build), from bytes checked against their sha256 first."""
        key = json.dumps([header.get(k) for k in ("sha256", "runtime", "threads", "providers")])
        if self._validating is not None and self._validating[0] == key:
            return self._validating[1]
        self._validating = None  # the previous model's session is freed before the next one is loaded
        sha = check_sha256(header.get("sha256"))
        if self.cache.status(sha)[0]:
            self.cache.verified_path(sha)
        runner, _ = self._runner(header)
        self._validating = (key, runner)
        return runner

    def bye(self, header, payload):
        self.running = False
        return {}
