"""Applying a plan: structured pruning of each group with Torch-Pruning, then BatchNorm recalibration."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import Tensor, nn

from edgecompress.compress._space import (
    CompressionPlan,
    SearchSpace,
    dependency_graph,
    kept_channels,
    root_module,
)
from edgecompress.errors import ExportError

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def model_cost(model: nn.Module, input_shape: Iterable[int]) -> tuple[int, int]:
    """(multiply-accumulates, parameters) of one inference at ``input_shape``.

    The multiply-accumulates are those of the convolutions and linear layers, as MACs are usually quoted: a
    BatchNorm, an activation or a pooling layer multiplies and adds too, but is no multiply-accumulate over weights.
    """
    macs = 0

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features
        elif isinstance(module, _CONVS):
            # Each output element of a convolution sums in_channels/groups x kernel products (a transposed one:
            # each input element is spread over out_channels/groups x kernel outputs).
            kernel = math.prod(module.kernel_size)
            if module.transposed:
                macs += inputs[0].numel() * (module.out_channels // module.groups) * kernel
            else:
                macs += output.numel() * (module.in_channels // module.groups) * kernel

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, *_CONVS))]
    example = torch.zeros(tuple(int(d) for d in input_shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return macs, sum(p.numel() for p in model.parameters())


def prune(model: nn.Module, plan: CompressionPlan, space: SearchSpace, input_shape: Iterable[int]) -> nn.Module:
    """Prune ``model`` in place: each group loses its lowest-L2-norm channels (norms summed over coupled layers)."""
    ratios = space.group_ratios(plan.ratios)
    if all(r == 0.0 for r in ratios.values()):
        return model
    graph = dependency_graph(model, input_shape)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for group in space.groups:
        ratio = ratios[group.name]
        if ratio == 0.0:
            continue
        root = root_module(model, group)
        pruner = graph.get_pruner_of_module(root)
        channels = pruner.get_out_channels(root)
        if channels != group.channels:
            raise ExportError(
                f"group {group.name} has {channels} channels in this model but the search space says "
                f"{group.channels}; build the space from the model being pruned"
            )
        remove = channels - kept_channels(channels, ratio, plan.round_to)
        if remove <= 0:
            continue
        # Scores come from the whole coupled group, so a residual stream keeps the channels that matter to any
        # of its layers, not just to the first one.
        full = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(channels)))
        scores = importance(full)
        if scores is None:
            raise ExportError(f"group {group.name}: no importance scores (no weights to rank channels by)")
        drop = torch.argsort(scores)[:remove].tolist()
        dg_group = graph.get_pruning_group(root, pruner.prune_out_channels, sorted(drop))
        if not graph.check_pruning_group(dg_group):
            raise ExportError(f"group {group.name}: pruning {remove} of {channels} channels would empty a layer")
        dg_group.prune()
    return model


def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], max_batches: int = 16, device: str = "cpu"
) -> nn.Module:
    """Re-estimate BatchNorm running statistics from data (a pruned layer's outputs change their distribution), on
    ``device``; the model comes back on the CPU."""
    norms = [m for m in model.modules() if isinstance(m, _BATCHNORMS)]
    if not norms:
        return model
    saved = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch, not an exponential one
        m.train()
    model.to(device)
    try:
        with torch.no_grad():
            for index, (inputs, _) in enumerate(batches):
                if index >= max_batches:
                    break
                model(inputs.to(device))
    finally:
        for m in norms:
            m.momentum = saved[m]
        model.to("cpu").eval()
    return model


def apply_plan(model: nn.Module, plan: CompressionPlan, workload, space: SearchSpace, device: str = "cpu") -> nn.Module:
    """A pruned deep copy of ``model`` with BatchNorm statistics recalibrated on the workload's calibration data
    (on ``device``; the copy comes back on the CPU)."""
    plan.validate(space)
    pruned = prune(copy.deepcopy(model).eval(), plan, space, workload.input_shape)
    if not plan.is_identity:
        recalibrate_batchnorm(pruned, workload.calib, device=device)
    return pruned.eval()
