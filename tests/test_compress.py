"""The compression pipeline on the digits example and on the structure of the reference networks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecompress.compress import (
    CompressionPlan,
    apply_plan,
    build_artifact,
    evaluate_artifact,
    export_onnx,
    finetune,
    kept_channels,
    max_abs_diff,
    model_cost,
    plan_template,
    recalibrate_batchnorm,
    search_space,
)
from edgecompress.compress._export import onnx_session
from edgecompress.errors import ConfigError, ExportError
from edgecompress.workload import load_workload
from edgecompress.zoo import fashion_mobilenetv2, fashion_resnet

RESNET_SHAPE = (1, 1, 28, 28)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine a second spinning thread makes small models 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_workload(example="digits")


@pytest.fixture(scope="module")
def digits_space(digits):
    return search_space(digits.build_model(), digits.input_shape, digits.ignore)


def half_everywhere(space, **kwargs) -> CompressionPlan:
    return CompressionPlan(ratios={g.name: 0.5 for g in space.groups}, **kwargs)


# --- search space ---------------------------------------------------------------------------------------------------


def test_resnet_groups_couple_residual_channels():
    model = fashion_resnet()
    space = search_space(model, RESNET_SHAPE, ignore=("fc",))
    by_name = {g.name: g for g in space.groups}
    # The stem's output is added to layer1's output, so they are one group; layer2's downsample shortcut and its
    # second conv share the next stream.
    assert by_name["stem.0"].modules == ("stem.0", "layer1.0.conv2")
    assert set(by_name["layer2.0.conv2"].modules) == {"layer2.0.conv2", "layer2.0.downsample.0"}
    assert "layer3.0.conv2" in by_name and "fc" in by_name["layer3.0.conv2"].consumers
    assert set(space.group_names) == {
        "stem.0",
        "layer1.0.conv1",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer3.0.conv1",
        "layer3.0.conv2",
    }
    # Stages follow the feature-map resolution: 28x28, 14x14, 7x7.
    assert space.stages == {
        "stage1": ("stem.0", "layer1.0.conv1"),
        "stage2": ("layer2.0.conv1", "layer2.0.conv2"),
        "stage3": ("layer3.0.conv1", "layer3.0.conv2"),
    }
    assert search_space(model, RESNET_SHAPE, ("fc",), coarsen=True).dimensions == ("stage1", "stage2", "stage3")


def test_mobilenet_depthwise_channels_follow_their_expansion():
    space = search_space(fashion_mobilenetv2(), RESNET_SHAPE, ignore=("fc",))
    expansion = next(g for g in space.groups if g.name == "features.1.conv.0")
    assert expansion.modules == ("features.1.conv.0", "features.1.conv.3")  # 1x1 expansion + depthwise 3x3
    assert expansion.consumers == ("features.1.conv.6",)  # the projection loses the matching inputs


def test_ignoring_a_layer_keeps_its_group():
    model = fashion_resnet()
    space = search_space(model, RESNET_SHAPE, ignore=("fc", "layer1.0.conv2"))
    assert "stem.0" not in space.group_names  # coupled to the ignored conv
    with pytest.raises(ConfigError, match="does not have: nosuch"):
        search_space(model, RESNET_SHAPE, ignore=("nosuch",))


def test_untraceable_model_is_an_export_error():
    class LeavesTorch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = torch.from_numpy(self.conv(x).detach().numpy())  # the autograd trace stops here
            return self.fc(y.mean((2, 3)))

    with pytest.raises(ExportError, match="does not reach conv"):
        search_space(LeavesTorch(), (1, 1, 8, 8), ignore=("fc",))


# --- plans ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, True, "0.5", float("nan")])
def test_plan_rejects_bad_ratios(ratio):
    with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
        CompressionPlan(ratios={"conv1": ratio})


def test_plan_validation(digits_space):
    with pytest.raises(ConfigError, match="unknown group\\(s\\) 'conv9'"):
        CompressionPlan(ratios={"conv9": 0.5}).validate(digits_space)
    with pytest.raises(ConfigError, match="float_fallback names unknown"):
        CompressionPlan(quant="int8", float_fallback=("conv9",)).validate(digits_space)
    with pytest.raises(ConfigError, match="int8 models only"):
        CompressionPlan(float_fallback=("conv1",))
    with pytest.raises(ConfigError, match="quant"):
        CompressionPlan(quant="int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="round_to"):
        CompressionPlan(round_to=0)
    with pytest.raises(ConfigError, match="unknown field"):
        CompressionPlan.from_json({"ratio": {}})
    with pytest.raises(ConfigError, match="JSON object"):
        CompressionPlan.from_json([0.5])


def test_plan_json_round_trip_and_stage_ratios(digits_space):
    plan = CompressionPlan(ratios={"stage1": 0.5, "conv2": 0.25}, quant="int8", float_fallback=("conv1",), round_to=4)
    again = CompressionPlan.from_json(json.loads(json.dumps(plan.to_json())), digits_space)
    assert again == plan
    # A stage entry spreads to its groups; a group's own entry wins; unnamed groups are kept.
    assert digits_space.group_ratios(plan.ratios) == {"conv1": 0.5, "conv2": 0.25, "conv3": 0.0}
    template = plan_template(digits_space)
    assert set(template["ratios"]) == set(digits_space.group_names)
    assert CompressionPlan.from_json(template, digits_space).is_identity


def test_channels_are_rounded_to_8_by_default_as_tune_does(digits_space):
    """compress's template, a plan file without round_to and the Python API prune as tune does (multiples of 8)."""
    from edgecompress.config import TuneConfig

    assert TuneConfig().round_to == 8
    assert plan_template(digits_space)["round_to"] == 8
    assert CompressionPlan().round_to == CompressionPlan.from_json({"ratios": {"conv1": 0.6}}).round_to == 8


@pytest.mark.parametrize(
    ("channels", "ratio", "round_to", "kept"),
    [(64, 0.5, 1, 32), (64, 0.0, 1, 64), (10, 0.99, 1, 1), (64, 0.3, 8, 48), (6, 0.9, 4, 4), (3, 0.5, 8, 3)],
)
def test_kept_channels(channels, ratio, round_to, kept):
    assert kept_channels(channels, ratio, round_to) == kept


# --- pruning --------------------------------------------------------------------------------------------------------


def test_half_everywhere_on_resnet_cuts_macs_by_more_than_60_percent():
    model = fashion_resnet()
    space = search_space(model, RESNET_SHAPE, ("fc",))

    class Shape:  # apply_plan needs only the input shape and calibration data from the workload
        input_shape = RESNET_SHAPE
        calib = [(torch.randn(16, 1, 28, 28), torch.zeros(16, dtype=torch.long))]

    pruned = apply_plan(model, half_everywhere(space), Shape, space)
    macs_before, params_before = model_cost(model, RESNET_SHAPE)
    macs_after, params_after = model_cost(pruned, RESNET_SHAPE)
    assert macs_after <= 0.4 * macs_before and params_after < 0.4 * params_before
    assert model.layer1[0].conv1.out_channels == 16  # the original is untouched
    assert pruned.layer1[0].conv1.out_channels == 8 and pruned.stem[0].out_channels == 8
    assert pruned(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_macs_are_the_multiply_accumulates_of_convolutions_and_linear_layers():
    """BatchNorm, activations and pooling are no multiply-accumulates: a depthwise convolution counts its groups."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.ReLU6(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    macs, params = model_cost(model, (1, 3, 32, 32))
    assert macs == 32 * 32 * 8 * (3 * 3 * 3) + 32 * 32 * 8 * (1 * 3 * 3) + 8 * 10
    assert params == sum(p.numel() for p in model.parameters())
    sequence = nn.Sequential(nn.Conv1d(4, 6, 5), nn.GELU(), nn.Flatten(), nn.Linear(6 * 12, 3))
    assert model_cost(sequence, (2, 4, 16))[0] == 2 * (12 * 6 * 4 * 5 + 3 * 72)  # per call: the batch counts


def test_apply_plan_prunes_to_the_planned_widths(digits, digits_space):
    plan = CompressionPlan(ratios={"conv1": 0.5, "conv2": 0.3}, round_to=4)
    pruned = apply_plan(digits.build_model(), plan, digits, digits_space)
    assert pruned.conv1.out_channels == 8 and pruned.bn1.num_features == 8 and pruned.conv2.in_channels == 8
    assert pruned.conv2.out_channels == kept_channels(32, 0.3, 4) == 24
    assert pruned.conv3.out_channels == 32 and pruned.fc.out_features == 10
    assert not pruned.training


def test_batchnorm_recalibration_restores_corrupted_statistics(digits):
    model = digits.build_model()
    inputs, labels = next(iter(digits.val))

    def accuracy(m):
        with torch.no_grad():
            return float((m(inputs).argmax(1) == labels).float().mean())

    before = accuracy(model)
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(0.01)
    assert accuracy(model) < before - 0.3
    recalibrate_batchnorm(model, digits.calib)
    assert accuracy(model) >= before - 0.02
    assert model.bn1.momentum == 0.1 and not model.training  # the module is left as it was found


def test_finetuning_recovers_accuracy(digits, digits_space):
    teacher = digits.build_model()
    plan = CompressionPlan(ratios={"conv1": 0.6, "conv2": 0.6, "conv3": 0.6})
    pruned = apply_plan(teacher, plan, digits, digits_space)

    def accuracy(m):
        return evaluate_artifact(build_artifact(m, plan, digits), digits)

    before = accuracy(pruned)
    steps = []
    tuned = finetune(pruned, teacher, digits, steps=120, lr=0.02, progress=lambda s, loss: steps.append(s))
    after = accuracy(tuned)
    assert steps[-1] == 120 and not tuned.training
    assert after > before + 0.05, (before, after)
    assert pruned.conv1.weight is not tuned.conv1.weight  # the input model is not modified


# --- export, quantization, evaluation -------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 15, 17, 19])
def test_export_at_opset_runs_in_onnxruntime_and_matches_torch(digits, opset):
    model = digits.build_model()
    data = export_onnx(model, digits.input_shape, opset)
    proto = onnx.load_model_from_string(data)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    inputs = next(iter(digits.val))[0][:64]
    assert max_abs_diff(data, model, inputs) < 1e-4


def test_unsupported_opset_is_a_config_error(digits):
    with pytest.raises(ConfigError, match="opset 9"):
        export_onnx(digits.build_model(), digits.input_shape, 9)


def _weight_is_dequantized(proto: onnx.ModelProto, conv_name: str) -> bool:
    producers = {out: node for node in proto.graph.node for out in node.output}
    conv = next(n for n in proto.graph.node if n.name == conv_name)
    producer = producers.get(conv.input[1])
    return producer is not None and producer.op_type == "DequantizeLinear"


def test_int8_is_qdq_per_channel_and_close_to_fp32(digits, digits_space):
    model = digits.build_model()
    fp32 = build_artifact(model, CompressionPlan(), digits)
    int8 = build_artifact(model, CompressionPlan(quant="int8"), digits)
    proto = onnx.load_model_from_string(int8.data)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert _weight_is_dequantized(proto, "/conv1/Conv") and _weight_is_dequantized(proto, "/conv3/Conv")
    per_channel = [
        n for n in proto.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
    ]
    assert per_channel  # per-channel weight scales carry an axis
    assert int8.size_bytes < fp32.size_bytes / 2
    assert evaluate_artifact(int8, digits) >= evaluate_artifact(fp32, digits) - 0.02
    # Float fallback: conv1's group stays in float, the others stay quantized.
    mixed = build_artifact(model, CompressionPlan(quant="int8", float_fallback=("conv1",)), digits)
    mixed_proto = onnx.load_model_from_string(mixed.data)
    assert not _weight_is_dequantized(mixed_proto, "/conv1/Conv")
    assert _weight_is_dequantized(mixed_proto, "/conv3/Conv")


def test_fp16_weights_and_float32_interface(digits):
    model = digits.build_model()
    fp16 = build_artifact(model, CompressionPlan(quant="fp16"), digits)
    proto = onnx.load_model_from_string(fp16.data)
    conv_weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    assert conv_weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_weights)
    session = onnx_session(fp16.data)
    assert session.get_inputs()[0].type == "tensor(float)"
    fp32 = build_artifact(model, CompressionPlan(), digits)
    assert abs(evaluate_artifact(fp16, digits) - evaluate_artifact(fp32, digits)) <= 0.01


def test_evaluation_uses_the_artifact_bytes(digits):
    model = digits.build_model()
    artifact = build_artifact(model, CompressionPlan(), digits)
    inputs, labels = map(torch.cat, zip(*digits.val, strict=True))
    with torch.no_grad():
        expected = float((model(inputs).argmax(1) == labels).float().mean())
    assert evaluate_artifact(artifact, digits) == pytest.approx(expected, abs=1 / len(labels))
    assert evaluate_artifact(artifact, digits, limit=50) == pytest.approx(
        float((model(inputs[:50]).argmax(1) == labels[:50]).float().mean()), abs=0.02
    )
    # TFLite bytes are scored by the LiteRT interpreter (the TFLite path); these four bytes are no model.
    with pytest.raises(ExportError, match="TFLite interpreter cannot load"):
        from edgecompress.artifact import Artifact

        evaluate_artifact(Artifact.from_bytes(b"TFL3", "tflite"), digits)


def test_an_export_that_differs_from_torch_is_refused(digits):
    class Baked(nn.Module):
        """Exports its output for the tracing input as a constant: a silent export bug the check must catch."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return torch.from_numpy(self.fc(x.flatten(1)).detach().numpy())

    with pytest.raises(ExportError, match="traced as a constant"):
        build_artifact(Baked(), CompressionPlan(), digits)
    with pytest.raises(ExportError, match="format 'engine'"):  # TFLite is a format now (tests/test_runtimes.py)
        build_artifact(digits.build_model(), CompressionPlan(), digits, format="engine")


def test_metric_sees_numpy_logits(digits):
    seen = {}

    def metric(logits, labels):
        seen["types"] = (type(logits), type(labels), logits.shape[1])
        return 0.25

    import dataclasses

    custom = dataclasses.replace(digits, metric=metric)
    assert evaluate_artifact(build_artifact(custom.build_model(), CompressionPlan(), custom), custom) == 0.25
    assert seen["types"] == (np.ndarray, np.ndarray, 10)
