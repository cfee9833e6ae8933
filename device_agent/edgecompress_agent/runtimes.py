"""Inference runtimes the agent can drive, each imported only when asked for."""

import importlib
import os

from .protocol import FrameError

RUNTIMES = ("onnxruntime", "tflite")
# LiteRT first when both are installed: tflite-runtime stopped at 2.14, whose interpreter applies XNNPACK to fp32
# models but left a PT2E int8 model on its own kernels here (twice as slow as ai-edge-litert 2.3; docs/devices.md).
_TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


class RuntimeUnavailable(FrameError):
    """The runtime asked for is not importable on this device."""

    kind = "RuntimeUnavailable"


class ModelLoadError(FrameError):
    """The runtime refused the model."""

    kind = "ModelLoadError"


def _import(name):
    try:
        return importlib.import_module(name)
    except Exception:  # a broken install raises anything from ImportError to OSError
        return None


def detect():
    """The runtimes importable here, with versions and providers."""
    found = []
    ort = _import("onnxruntime")
    if ort is not None:
        found.append({"name": "onnxruntime", "version": getattr(ort, "__version__", None),
                      "providers": list(ort.get_available_providers())})
    for module_name in _TFLITE_MODULES:
        module = _import(module_name)
        if module is not None:
            package = _import(module_name.split(".")[0])
            found.append({"name": "tflite", "module": module_name.split(".")[0],
                          "version": getattr(package, "__version__", None), "providers": ["cpu", "xnnpack"]})
            break
    np = _import("numpy")
    return {"runtimes": found, "numpy": getattr(np, "__version__", None)}


def default_threads(cpus=None, cpuinfo="/proc/cpuinfo"):
    """The thread count when a request names none, the same for every runtime: one per physical core of ``cpus``
    (default: those this process may run on), as onnxruntime chooses by itself (LiteRT's own default is 1)."""
    if cpus:
        allowed = set(cpus)
    elif hasattr(os, "sched_getaffinity"):
        allowed = set(os.sched_getaffinity(0))
    else:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    try:
        with open(cpuinfo) as handle:
            blocks = handle.read().split("\n\n")
    except (IOError, OSError):
        blocks = []
    for block in blocks:
        fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()))
        # x86 names each logical CPU's core; ARM boards (one thread per core) do not, and count as logical CPUs.
        if fields.get("processor", "").isdigit() and int(fields["processor"]) in allowed and "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return max(1, len(cores) or len(allowed))


def _numpy():
    np = _import("numpy")
    if np is None:
        raise RuntimeUnavailable("numpy is not importable by this Python; the runtimes need it")
    return np


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}


class OnnxRunner(object):
    """An onnxruntime InferenceSession with fixed options."""

    def __init__(self, path, threads=None, providers=None, options=None):
        ort = _import("onnxruntime")
        if ort is None:
            raise RuntimeUnavailable("onnxruntime is not importable by this Python")
        so = ort.SessionOptions()
        self.threads = int(threads) if threads else default_threads()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        available = ort.get_available_providers()
        wanted = list(providers) if providers else ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise RuntimeUnavailable("onnxruntime {} lacks provider(s) {}; available: {}".format(
                ort.__version__, ", ".join(missing), ", ".join(available)))
        try:
            self.session = ort.InferenceSession(path, sess_options=so, providers=wanted)
        except Exception as exc:
            raise ModelLoadError("onnxruntime {} cannot load the model: {}".format(ort.__version__, _short(exc)))
        self.providers = self.session.get_providers()
        self.inputs = [{"name": i.name, "dtype": _ORT_TYPES.get(i.type, i.type), "shape": list(i.shape)}
                       for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds):
        return self.session.run(None, feeds)


class TfliteRunner(object):
    """A TFLite interpreter (tflite_runtime or ai_edge_litert) with XNNPACK where the build has it."""

    def __init__(self, path, threads=None, providers=None, options=None):
        module = None
        for name in _TFLITE_MODULES:
            module = _import(name)
            if module is not None:
                break
        if module is None:
            raise RuntimeUnavailable("neither tflite_runtime nor ai_edge_litert is importable by this Python")
        np = _numpy()
        self._np = np
        self.threads = int(threads) if threads else default_threads()
        try:
            self.interpreter = module.Interpreter(model_path=path, num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelLoadError("the TFLite interpreter cannot load the model: {}".format(_short(exc)))
        self.providers = ["xnnpack"]
        details = self.interpreter.get_input_details()
        self._input_index = {d["name"]: d["index"] for d in details}
        self.inputs = [{"name": d["name"], "dtype": np.dtype(d["dtype"]).name, "shape": [int(x) for x in d["shape"]]}
                       for d in details]
        self._output_index = [d["index"] for d in self.interpreter.get_output_details()]
        self.outputs = [d["name"] for d in self.interpreter.get_output_details()]

    def run(self, feeds):
        for name, value in feeds.items():
            self.interpreter.set_tensor(self._input_index[name], value)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in self._output_index]


def _short(exc):
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def load(path, runtime="onnxruntime", threads=None, providers=None, options=None):
    """Load a model file with the named runtime."""
    if runtime == "onnxruntime":
        return OnnxRunner(path, threads, providers, options)
    if runtime == "tflite":
        return TfliteRunner(path, threads, providers, options)
    raise FrameError("unknown runtime {!r}; known: {}".format(runtime, ", ".join(RUNTIMES)))


def _check_shapes(runner, shapes):
    """A FrameError unless ``shapes`` maps the model's input names to lists of positive integers of the right rank."""
    declared = dict((spec["name"], spec["shape"]) for spec in runner.inputs)
    for name, shape in shapes.items():
        if name not in declared:
            raise FrameError("input_shapes names {!r}, which is not an input of the model (its inputs: {})".format(
                name, ", ".join(sorted(declared))))
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
            raise FrameError("input_shapes[{!r}] must be a list of positive integers".format(name))
        if len(shape) != len(declared[name]):
            raise FrameError("input_shapes[{!r}] has {} dimensions; the model's input has {} ({})".format(
                name, len(shape), len(declared[name]), declared[name]))


def random_inputs(runner, shapes=None, seed=0):
    """Inputs of the model's declared types; dynamic dimensions are 1 unless ``shapes`` names them."""
    np = _numpy()
    rng = np.random.RandomState(seed)
    feeds = {}
    shapes = shapes or {}
    _check_shapes(runner, shapes)
    for spec in runner.inputs:
        shape = shapes.get(spec["name"]) or [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
        dtype = np.dtype(spec["dtype"])
        try:
            if dtype.kind == "f":
                feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                feeds[spec["name"]] = rng.randint(0, 2, size=shape).astype(dtype)
            else:
                feeds[spec["name"]] = rng.randint(0, 10, size=shape).astype(dtype)
        except ValueError as exc:  # numpy's answer to a shape beyond the address space
            raise FrameError("input {!r} of shape {} cannot be allocated: {}".format(spec["name"], shape, exc))
    return feeds


def run_batches(runner, feeds, batch=None):
    """The model's outputs for ``feeds``: one run, or with ``batch`` one run per ``batch`` samples along the first
    axis, the outputs joined along it (a model with a fixed batch of 1 then takes many samples per request)."""
    if batch is None:
        return _run(runner, feeds)
    np = _numpy()
    sizes = set(len(v) if v.ndim else 0 for v in feeds.values())
    if len(sizes) != 1 or 0 in sizes:
        raise FrameError("with 'batch', every input needs the same number of samples along its first axis")
    total = sizes.pop()
    parts = []
    for start in range(0, total, batch):
        parts.append(_run(runner, dict((k, v[start:start + batch]) for k, v in feeds.items())))
    if any(np.ndim(o) == 0 for o in parts[0]):
        raise FrameError("with 'batch', every output needs a batch axis; this model has a scalar output")
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _run(runner, feeds):
    try:
        return runner.run(feeds)
    except Exception as exc:
        raise FrameError("inference failed on inputs of shape {}: {}".format(
            dict((k, list(v.shape)) for k, v in feeds.items()), _short(exc)))


def decode_arrays(specs, payload):
    """Arrays from a payload described by [{name, dtype, shape, offset, nbytes}] (no pickle)."""
    np = _numpy()
    arrays = {}
    for spec in specs:
        if not isinstance(spec, dict):
            raise FrameError("each input spec must be an object")
        try:
            dtype = np.dtype(str(spec["dtype"]))
            shape = [int(d) for d in spec["shape"]]
            offset, nbytes = int(spec["offset"]), int(spec["nbytes"])
            name = str(spec["name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FrameError("bad input spec {!r}: {}".format(spec, exc))
        if dtype.hasobject:
            raise FrameError("object arrays are not accepted")
        if offset < 0 or nbytes < 0 or offset + nbytes > len(payload) or any(d < 0 for d in shape):
            raise FrameError("input {!r} lies outside the payload".format(name))
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != nbytes:
            raise FrameError("input {!r}: shape {} of {} needs {} bytes, got {}".format(
                name, shape, dtype.name, count * dtype.itemsize, nbytes))
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
    return arrays


def encode_arrays(named_arrays):
    """(specs, payload) for a list of (name, array) pairs."""
    np = _numpy()
    specs, parts, offset = [], [], 0
    for name, array in named_arrays:
        array = np.ascontiguousarray(array)
        data = array.tobytes()
        specs.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
                      "offset": offset, "nbytes": len(data)})
        parts.append(data)
        offset += len(data)
    return specs, b"".join(parts)
