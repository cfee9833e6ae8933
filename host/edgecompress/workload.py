"""Workloads: a model with trained weights, its data, and the metric the search maximises.

A workload comes from the built-in examples (``--example digits`` or ``--example fashion-mnist``) or from two user
entry points written ``package.module:attribute``:

- the model entry is a callable returning ``(model, input_shape)`` (or just the model; the input shape is then read
  from the first validation batch, with batch 1);
- the data entry is a callable returning a mapping (or an object with attributes) ``train``, ``val``, optionally
  ``calib`` (default: the first training batches, about 512 samples), ``metric`` (default: top-1 accuracy) and
  ``ignore`` (module names never pruned; default: the last Linear layer).

Iterables are re-iterated (BN recalibration, fine-tuning and every evaluation each start from the beginning), so they
must not be one-shot generators.
"""

from __future__ import annotations

import copy
import gzip
import importlib
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgecompress.errors import WorkloadError
from edgecompress.examples import ARCHITECTURES, check_example, check_workload_source

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
# Per-dataset normalisation (mean, std of the training pixels in [0, 1]), applied before the network sees a batch.
_NORMALISATION = {"digits": (0.3053, 0.3760), "fashion-mnist": (0.2860, 0.3530)}

Batch = tuple[Tensor, Tensor]


def label_range_problem(labels: np.ndarray, outputs: int) -> str | None:
    """Why class labels do not fit a model with ``outputs`` outputs (a label outside 0..outputs-1), or None."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) == 0:
        return None
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and high < outputs:
        return None
    return (
        f"labels range over {low}..{high}, but the model has {outputs} outputs (classes 0..{outputs - 1}); "
        "number the classes from 0, or give the model one output per class"
    )


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]; a WorkloadError for a label no output stands for (it could never score)."""
    if len(labels) == 0:
        return 0.0
    problem = label_range_problem(labels, logits.shape[1])
    if problem:
        raise WorkloadError(f"top-1 accuracy: {problem}")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


@dataclass(frozen=True)
class Workload:
    """Everything the compression pipeline needs about one model and its data."""

    name: str
    build_model: Callable[[], nn.Module]  # a fresh copy in eval mode, with trained weights
    input_shape: tuple[int, ...]  # batch 1, e.g. (1, 1, 28, 28)
    train: Iterable[Batch]
    val: Iterable[Batch]
    calib: Iterable[Batch]
    metric: Callable[[np.ndarray, np.ndarray], float] = top1
    ignore: tuple[str, ...] = ()
    test: Iterable[Batch] | None = None  # held out from the search; the built-in examples report on it
    extra: Mapping[str, Any] = field(default_factory=dict)


class ArrayLoader:
    """Re-iterable batches over in-memory arrays; shuffles with a fresh permutation on each pass when asked."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0):
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        order = torch.from_numpy(self._rng.permutation(n)) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                yield self.images[index], self.labels[index]


# --- datasets -------------------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise WorkloadError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise WorkloadError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise WorkloadError(f"{path} is truncated: header says {shape}, file has {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise WorkloadError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory} (install Debian's "
        "dataset-fashion-mnist or pass --data-dir with the four IDX files)"
    )


def fashion_mnist_arrays(data_dir: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST as normalised float arrays (N, 1, 28, 28) and labels: train (55,000), val (5,000), test (10,000).

    The validation split is the last 5,000 training images, fixed, so the search never looks at the test set.
    """
    directory = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    if not directory.is_dir():
        raise WorkloadError(
            f"Fashion-MNIST directory {directory} does not exist (install Debian's "
            "dataset-fashion-mnist or pass --data-dir)"
        )
    train_x = read_idx(_find_idx(directory, "train-images-idx3-ubyte"))
    train_y = read_idx(_find_idx(directory, "train-labels-idx1-ubyte"))
    test_x = read_idx(_find_idx(directory, "t10k-images-idx3-ubyte"))
    test_y = read_idx(_find_idx(directory, "t10k-labels-idx1-ubyte"))
    for images, labels in ((train_x, train_y), (test_x, test_y)):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise WorkloadError(
                f"Fashion-MNIST files in {directory} do not match: images {images.shape}, labels {labels.shape}"
            )
    mean, std = _NORMALISATION["fashion-mnist"]

    def prepare(images: np.ndarray) -> np.ndarray:
        return ((images.astype(np.float32) / 255.0 - mean) / std)[:, None, :, :]

    n_val = min(5000, len(train_x) // 10)
    return {
        "train": (prepare(train_x[:-n_val]), train_y[:-n_val].astype(np.int64)),
        "val": (prepare(train_x[-n_val:]), train_y[-n_val:].astype(np.int64)),
        "test": (prepare(test_x), test_y.astype(np.int64)),
    }


def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits as normalised float arrays: a fixed shuffled split of 1,197 / 300 / 300."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    mean, std = _NORMALISATION["digits"]
    images = ((images - mean) / std)[:, None, :, :]
    return {
        "train": (images[:-600], labels[:-600]),
        "val": (images[-600:-300], labels[-600:-300]),
        "test": (images[-300:], labels[-300:]),
    }


# --- built-in examples ----------------------------------------------------------------------------------------------


def checkpoint_path(example: str, arch: str) -> Path:
    """Where the shipped weights of a built-in example live (inside the installed package)."""
    return Path(__file__).parent / "checkpoints" / f"{example}-{arch}.pt"


def reference_network(example: str, arch: str) -> nn.Module:
    """A randomly initialised reference network of a built-in example."""
    from edgecompress import zoo

    factories: dict[tuple[str, str], Callable[[], nn.Module]] = {
        ("digits", "cnn"): zoo.digits_cnn,
        ("fashion-mnist", "resnet"): zoo.fashion_resnet,
        ("fashion-mnist", "mobilenetv2"): zoo.fashion_mobilenetv2,
    }
    return factories[(example, arch)]()


def _load_checkpoint(model: nn.Module, path: Path) -> nn.Module:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"] if "state_dict" in state else state)
    return model.eval()


def train_digits(
    model: nn.Module, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], epochs: int = 30, seed: int = 0
) -> nn.Module:
    """Train the digits CNN (a few seconds on a CPU); used when no checkpoint ships and by the training script."""
    torch.manual_seed(seed)
    loader = ArrayLoader(*arrays["train"], batch_size=64, shuffle=True, seed=seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def _example(example: str, arch: str | None, data_dir: str | None, val_limit: int | None) -> Workload:
    arch = arch or ARCHITECTURES[example][0]
    if example == "digits":
        arrays = digits_arrays()
        input_shape: tuple[int, ...] = (1, 1, 8, 8)
    else:
        arrays = fashion_mnist_arrays(data_dir)
        input_shape = (1, 1, 28, 28)
    path = checkpoint_path(example, arch)
    if path.is_file():
        trained = _load_checkpoint(reference_network(example, arch), path)
    elif example == "digits":
        trained = train_digits(reference_network(example, arch), arrays)
    else:
        raise WorkloadError(
            f"no checkpoint {path.name} in the package; train it with "
            f"`python scripts/train_reference.py --example {example} --arch {arch}`"
        )
    val_x, val_y = arrays["val"]
    if val_limit is not None:
        val_x, val_y = val_x[:val_limit], val_y[:val_limit]
    train_x, train_y = arrays["train"]
    calib_n = min(512, len(train_y))
    # The calibration samples are spread over the training set rather than its first rows, so every class appears.
    calib_index = np.random.default_rng(1).choice(len(train_y), calib_n, replace=False)
    return Workload(
        name=f"{example}/{arch}",
        build_model=lambda: copy.deepcopy(trained),
        input_shape=input_shape,
        train=ArrayLoader(train_x, train_y, batch_size=128, shuffle=True),
        val=ArrayLoader(val_x, val_y, batch_size=500),
        calib=ArrayLoader(train_x[calib_index], train_y[calib_index], batch_size=128),
        metric=top1,
        ignore=("fc",),
        test=ArrayLoader(*arrays["test"], batch_size=500),
    )


# --- user entry points ----------------------------------------------------------------------------------------------


def resolve_entry_point(spec: str, what: str) -> Any:
    """Import ``package.module:attribute`` (the attribute may be dotted); WorkloadError naming what failed."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise WorkloadError(f"{what} entry point {spec!r} is not of the form package.module:attribute")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is the user's to see, in one line
        raise WorkloadError(
            f"{what} entry point {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from exc
    except SystemExit as exc:  # would end edgecompress with the user's exit code, and nothing done
        raise WorkloadError(f"{what} entry point {spec!r}: importing {module_name} called {_exit_call(exc)}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise WorkloadError(f"{what} entry point {spec!r}: {module_name} has no attribute {attr!r}") from None
    return target


def _exit_call(exc: SystemExit) -> str:
    return "sys.exit()" if exc.code is None else f"sys.exit({exc.code!r})"


def _call(target: Any, spec: str, what: str) -> Any:
    if not callable(target):
        return target
    try:
        return target()
    except Exception as exc:
        raise WorkloadError(f"{what} entry point {spec!r} raised {type(exc).__name__}: {exc}") from exc
    except SystemExit as exc:  # would end edgecompress with the user's exit code, and nothing done
        raise WorkloadError(
            f"{what} entry point {spec!r} called {_exit_call(exc)}; it must return its result (or raise an error)"
        ) from exc


def _field(source: Any, name: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _check_iterable(value: Any, name: str, spec: str) -> tuple[Iterable[Batch], Batch]:
    """The iterable and its first batch, or a WorkloadError saying what is wrong with it."""
    if value is None:
        raise WorkloadError(f"data entry point {spec!r} gave no {name!r} iterable")
    if isinstance(value, Iterator):
        raise WorkloadError(
            f"data entry point {spec!r}: {name!r} is a one-shot iterator; return a re-iterable "
            "object such as a list or a torch DataLoader"
        )
    try:
        first = next(iter(value))
    except TypeError:
        raise WorkloadError(f"data entry point {spec!r}: {name!r} is not iterable") from None
    except StopIteration:
        raise WorkloadError(f"data entry point {spec!r}: {name!r} is empty") from None
    if not (isinstance(first, (tuple, list)) and len(first) >= 2 and isinstance(first[0], Tensor)):
        raise WorkloadError(
            f"data entry point {spec!r}: {name!r} must yield (inputs, labels) tensor pairs, got {type(first).__name__}"
        )
    return value, (first[0], first[1])


def _check_batch(first: Batch, name: str, spec: str, input_shape: tuple[int, ...], classes: int | None) -> None:
    """A WorkloadError when a first batch does not fit the model: its inputs' shape, or (top-1 accuracy) its labels."""
    inputs, labels = first
    if tuple(inputs.shape[1:]) != tuple(input_shape[1:]):
        takes = ", ".join(["N", *(str(d) for d in input_shape[1:])])
        raise WorkloadError(
            f"data entry point {spec!r}: {name!r} batches hold inputs of shape {tuple(inputs.shape)}; the model "
            f"takes ({takes}) (its input shape {input_shape}); make the data and the model's input shape agree"
        )
    problem = label_range_problem(np.asarray(labels), classes) if classes and isinstance(labels, Tensor) else None
    if problem:
        raise WorkloadError(f"data entry point {spec!r}: {name!r} {problem}")


def _default_ignore(model: nn.Module) -> tuple[str, ...]:
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return (linears[-1],) if linears else ()


class _FirstBatches:
    """The first batches of an iterable, up to about ``samples`` samples; re-iterable."""

    def __init__(self, source: Iterable[Batch], samples: int):
        self.source, self.samples = source, samples

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        for batch in self.source:
            if seen >= self.samples:
                return
            seen += len(batch[1])
            yield batch


class _LimitedBatches(_FirstBatches):
    """The first ``samples`` samples of an iterable exactly (the last batch is cut)."""

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        for inputs, labels in self.source:
            if seen >= self.samples:
                return
            keep = min(len(labels), self.samples - seen)
            seen += keep
            yield inputs[:keep], labels[:keep]


def _user(model_spec: str, data_spec: str, val_limit: int | None) -> Workload:
    made = _call(resolve_entry_point(model_spec, "model"), model_spec, "model")
    input_shape: tuple[int, ...] | None = None
    if isinstance(made, tuple) and len(made) == 2:
        made, shape = made
        try:
            input_shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise WorkloadError(
                f"model entry point {model_spec!r} returned input shape {shape!r}, not a tuple of integers"
            ) from None
    if not isinstance(made, nn.Module):
        raise WorkloadError(
            f"model entry point {model_spec!r} returned {type(made).__name__}, not a torch "
            "nn.Module (or a (module, input_shape) pair)"
        )
    model = made.eval()
    data = _call(resolve_entry_point(data_spec, "data"), data_spec, "data")
    if isinstance(data, (tuple, list)):
        data = dict(zip(("train", "val", "calib", "metric"), data, strict=False))
    train, first_train = _check_iterable(_field(data, "train"), "train", data_spec)
    val, first_val = _check_iterable(_field(data, "val"), "val", data_spec)
    firsts = {"train": first_train, "val": first_val}
    calib_value = _field(data, "calib")
    if calib_value is not None:
        calib, firsts["calib"] = _check_iterable(calib_value, "calib", data_spec)
    else:
        calib = _FirstBatches(train, 512)
    metric = _field(data, "metric") or top1
    if not callable(metric):
        raise WorkloadError(f"data entry point {data_spec!r}: metric is not callable")
    if input_shape is None:
        input_shape = (1, *first_val[0].shape[1:])
    ignore = _field(data, "ignore")
    ignore = tuple(ignore) if ignore is not None else _default_ignore(model)
    if val_limit is not None:
        val = _LimitedBatches(val, val_limit)
    try:
        with torch.no_grad():
            output = model(torch.zeros(input_shape))
    except Exception as exc:
        raise WorkloadError(
            f"model from {model_spec!r} fails on an input of shape {input_shape}: {type(exc).__name__}: {exc}"
        ) from exc
    # Labels are class numbers only for top-1 accuracy; a metric of the user's own may read them otherwise.
    classes = output.shape[1] if metric is top1 and isinstance(output, Tensor) and output.ndim == 2 else None
    for name, first in firsts.items():
        _check_batch(first, name, data_spec, input_shape, classes)
    return Workload(
        name=model_spec,
        build_model=lambda: copy.deepcopy(model),
        input_shape=input_shape,
        train=train,
        val=val,
        calib=calib,
        metric=metric,
        ignore=ignore,
        test=_field(data, "test"),
    )


def load_workload(
    example: str | None = None,
    model: str | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    arch: str | None = None,
    val_limit: int | None = None,
) -> Workload:
    """A built-in example (``example``, ``arch``, ``data_dir``) or user entry points (``model`` and ``data``)."""
    if val_limit is not None and val_limit < 1:
        raise WorkloadError(f"val_limit must be positive, got {val_limit}")
    check_workload_source(example, model, data, data_dir, arch)
    if example is not None:
        return _example(example, arch, data_dir, val_limit)
    assert model is not None and data is not None
    return _user(model, data, val_limit)


@dataclass(frozen=True)
class LabelledData:
    """Labelled batches and the metric that scores outputs on them: all ``validate`` needs of a workload."""

    name: str
    val: Iterable[Batch]
    metric: Callable[[np.ndarray, np.ndarray], float] = top1


def load_labelled_data(
    example: str | None = None, data: str | None = None, data_dir: str | None = None
) -> LabelledData:
    """The validation split of a built-in example, or the ``val`` batches (and ``metric``) of a user data entry
    point; no model is built or loaded."""
    if (example is None) == (data is None):
        raise WorkloadError("give either an example or a --data entry point (package.module:attribute)")
    if example is not None:
        check_example(example, data_dir)
        arrays = digits_arrays() if example == "digits" else fashion_mnist_arrays(data_dir)
        return LabelledData(name=example, val=ArrayLoader(*arrays["val"], batch_size=500))
    assert data is not None
    if data_dir is not None:
        raise WorkloadError("--data-dir applies to the built-in examples only")
    made = _call(resolve_entry_point(data, "data"), data, "data")
    if isinstance(made, (tuple, list)):
        made = dict(zip(("train", "val", "calib", "metric"), made, strict=False))
    val, _ = _check_iterable(_field(made, "val"), "val", data)
    metric = _field(made, "metric") or top1
    if not callable(metric):
        raise WorkloadError(f"data entry point {data!r}: metric is not callable")
    return LabelledData(name=data, val=val, metric=metric)
