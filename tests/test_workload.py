"""Workloads: IDX reading, the built-in examples, and user entry points with clear errors."""

from __future__ import annotations

import gzip
import struct
import textwrap

import numpy as np
import pytest
import torch

from edgecompress.errors import WorkloadError
from edgecompress.examples import EXAMPLES
from edgecompress.workload import (
    ArrayLoader,
    fashion_mnist_arrays,
    load_workload,
    read_idx,
    top1,
)


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """An IDX file as the MNIST/Fashion-MNIST distributions lay it out (magic 0x0000 08 ndim, big-endian dims)."""
    data = (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture()
def fashion_dir(tmp_path):
    """A miniature Fashion-MNIST folder: 60 training and 20 test images with the real file names."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(60) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)), compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(20) % 10, compress=False)
    return tmp_path


def test_read_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b", array, compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    assert np.array_equal(read_idx(tmp_path / "b"), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "a", np.zeros((4, 28, 28)), compress=False)
    (tmp_path / "a").write_bytes((tmp_path / "a").read_bytes()[:-10])
    with pytest.raises(WorkloadError, match="truncated"):
        read_idx(tmp_path / "a")
    (tmp_path / "b").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(WorkloadError, match="not an IDX file"):
        read_idx(tmp_path / "b")


def test_fashion_mnist_split_and_normalisation(fashion_dir):
    arrays = fashion_mnist_arrays(fashion_dir)
    assert arrays["train"][0].shape == (54, 1, 28, 28) and arrays["val"][0].shape == (6, 1, 28, 28)
    assert arrays["test"][0].shape == (20, 1, 28, 28) and arrays["test"][1].dtype == np.int64
    # Validation is the tail of the training file, so training and validation never share an image.
    assert list(arrays["val"][1]) == [i % 10 for i in range(54, 60)]
    assert -1.0 < arrays["train"][0].mean() < 2.0  # normalised, not raw bytes


def test_fashion_mnist_missing_files_name_the_file(tmp_path, fashion_dir):
    with pytest.raises(WorkloadError, match="does not exist"):
        fashion_mnist_arrays(tmp_path / "nowhere")
    (fashion_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(WorkloadError, match="t10k-labels-idx1-ubyte"):
        fashion_mnist_arrays(fashion_dir)


def test_fashion_mnist_example_reads_data_dir(fashion_dir):
    workload = load_workload(example="fashion-mnist", data_dir=str(fashion_dir))
    assert workload.input_shape == (1, 1, 28, 28) and workload.ignore == ("fc",)
    assert sum(len(y) for _, y in workload.val) == 6
    logits = workload.build_model()(next(iter(workload.val))[0])
    assert logits.shape == (6, 10)


def test_digits_example():
    workload = load_workload(example="digits", val_limit=100)
    assert workload.name == "digits/cnn" and workload.input_shape == (1, 1, 8, 8)
    assert sum(len(y) for _, y in workload.val) == 100
    assert 400 <= sum(len(y) for _, y in workload.calib) <= 512
    model = workload.build_model()
    assert not model.training
    assert model is not workload.build_model()  # fresh copies: pruning one must not touch the next
    inputs, labels = next(iter(workload.val))
    with torch.no_grad():
        assert top1(model(inputs).numpy(), labels.numpy()) > 0.9  # the shipped weights are trained
    assert set(EXAMPLES) == {"digits", "fashion-mnist"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"example": "cifar"}, "unknown example"),
        ({"example": "digits", "arch": "vgg"}, "no architecture 'vgg'"),
        ({"example": "digits", "model": "a:b"}, "not both"),
        ({"model": "a:b"}, "both --model and --data"),
        ({}, "give --example"),
        ({"example": "digits", "val_limit": 0}, "val_limit"),
        ({"model": "no_colon", "data": "x:y"}, "package.module:attribute"),
        ({"model": "edgecompress_no_such_module:f", "data": "x:y"}, "cannot import"),
        ({"model": "json:no_such_attr", "data": "x:y"}, "has no attribute"),
    ],
)
def test_bad_workload_arguments(kwargs, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(**kwargs)


def test_array_loader_reiterates_and_shuffles():
    loader = ArrayLoader(np.zeros((10, 1, 2, 2)), np.arange(10), batch_size=4, shuffle=True)
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert len(loader) == 3 and sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()  # a fresh permutation per pass


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """A user package on sys.path with several model and data entry points, good and bad."""
    (tmp_path / "usermodels.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        def model():
            net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 3))
            return net, (1, 1, 4, 4)

        def model_without_shape():
            return model()[0]

        def not_a_model():
            return "resnet"

        def broken():
            raise RuntimeError("weights file missing")

        def _batches(n):
            g = torch.Generator().manual_seed(0)
            return [(torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(2)]

        def data():
            return {"train": _batches(8), "val": _batches(5)}

        def data_tuple():
            return _batches(8), _batches(5), _batches(4), lambda logits, labels: 0.5

        def data_generator():
            return {"train": (b for b in _batches(8)), "val": _batches(5)}

        def data_no_val():
            return {"train": _batches(8)}

        def data_not_pairs():
            return {"train": [1, 2], "val": _batches(5)}

        def data_labels_from_one():
            # Labels 1..3 for a model with 3 outputs (classes 0..2): top-1 would quietly score label 3 as wrong.
            return {"train": _batches(8), "val": [(x, y + 1) for x, y in _batches(5)]}

        def data_wrong_shape():
            g = torch.Generator().manual_seed(0)
            return {"train": _batches(8), "val": [(torch.randn(5, 1, 8, 8, generator=g), torch.zeros(5).long())]}

        def exits():
            import sys

            sys.exit(0)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "usermodels"


def test_user_entry_points(user_module):
    workload = load_workload(model=f"{user_module}:model", data=f"{user_module}:data")
    assert workload.input_shape == (1, 1, 4, 4)
    assert workload.ignore == ("3",)  # the last Linear layer: the classifier keeps its outputs
    assert workload.metric is top1
    assert len(list(workload.calib)) == 2  # defaults to the first training batches
    inferred = load_workload(model=f"{user_module}:model_without_shape", data=f"{user_module}:data_tuple")
    assert inferred.input_shape == (1, 1, 4, 4)  # from the first validation batch
    assert inferred.metric(np.zeros((2, 3)), np.zeros(2)) == 0.5 and len(list(inferred.calib)) == 2


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("not_a_model", "data", "returned str, not a torch nn.Module"),
        ("broken", "data", "raised RuntimeError: weights file missing"),
        ("model", "data_generator", "one-shot iterator"),
        ("model", "data_no_val", "no 'val' iterable"),
        ("model", "data_not_pairs", "must yield \\(inputs, labels\\)"),
        (
            "model",
            "data_labels_from_one",
            "'val' labels range over 1..3, but the model has 3 outputs \\(classes 0..2\\)",
        ),
        (
            "model",
            "data_wrong_shape",
            "'val' batches hold inputs of shape \\(5, 1, 8, 8\\); the model takes \\(N, 1, 4, 4\\)",
        ),
        ("exits", "data", "model entry point 'usermodels:exits' called sys.exit\\(0\\)"),
        ("model", "exits", "data entry point 'usermodels:exits' called sys.exit\\(0\\)"),
    ],
)
def test_bad_user_entry_points(user_module, model, data, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(model=f"{user_module}:{model}", data=f"{user_module}:{data}")


def test_a_module_that_exits_on_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "exiting.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        WorkloadError, match="model entry point 'exiting:model': importing exiting called sys.exit\\(3\\)"
    ):
        load_workload(model="exiting:model", data="exiting:data")


def test_top1_refuses_labels_outside_the_classes():
    logits = np.eye(3)
    assert top1(logits, np.array([0, 1, 2])) == 1.0
    with pytest.raises(WorkloadError, match="labels range over 0..3, but the model has 3 outputs \\(classes 0..2\\)"):
        top1(np.eye(4, 3), np.array([0, 1, 2, 3]))
    with pytest.raises(WorkloadError, match="labels range over -1..2"):
        top1(logits, np.array([-1, 1, 2]))
