"""The search space of a model: its prunable channel groups, their stages, and the plan that picks from them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

import torch
import torch_pruning as tp
from torch import nn

from edgecompress.errors import ConfigError, ExportError

Quant = Literal["fp32", "fp16", "int8"]
QUANT_MODES: tuple[str, ...] = ("fp32", "fp16", "int8")
_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Group:
    """Channels that must be pruned together, named after the first layer (in module order) whose outputs they are.

    ``modules`` are the convolution / linear layers whose output channels the group removes (coupled through
    residual additions, depthwise convolutions, concatenations ...); ``consumers`` lose the matching inputs.
    """

    name: str
    channels: int
    modules: tuple[str, ...]
    consumers: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    """The prunable groups of a model and a coarsening of them into stages (one feature-map resolution each).

    When ``coarse`` is true a search samples one ratio per stage (``dimensions`` lists the stage names);
    otherwise one per group. Plans may name groups or stages either way; a group's own entry wins.
    """

    groups: tuple[Group, ...]
    stages: Mapping[str, tuple[str, ...]]
    coarse: bool = False

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The names a search assigns a ratio to: stages when coarse, groups otherwise."""
        return tuple(self.stages) if self.coarse else tuple(g.name for g in self.groups)

    def group(self, name: str) -> Group:
        for group in self.groups:
            if group.name == name:
                return group
        raise ConfigError(f"unknown group {name!r}; the model's groups are: {', '.join(self.group_names)}")

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def group_ratios(self, ratios: Mapping[str, float]) -> dict[str, float]:
        """Per-group ratios from a plan's entries (stage entries spread to their groups; group entries win)."""
        stage_of = {g: stage for stage, members in self.stages.items() for g in members}
        names = set(self.group_names)
        unknown = [key for key in ratios if key not in names and key not in self.stages]
        if unknown:
            raise ConfigError(
                f"plan names unknown group(s) {', '.join(map(repr, sorted(unknown)))}; the model's "
                f"groups are {', '.join(self.group_names)} and its stages {', '.join(self.stages)}"
            )
        result = {}
        for group in self.groups:
            if group.name in ratios:
                result[group.name] = float(ratios[group.name])
            else:
                result[group.name] = float(ratios.get(stage_of.get(group.name, ""), 0.0))
        return result

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [
                {"name": g.name, "channels": g.channels, "modules": list(g.modules), "consumers": list(g.consumers)}
                for g in self.groups
            ],
            "stages": {k: list(v) for k, v in self.stages.items()},
            "coarse": self.coarse,
        }


def kept_channels(channels: int, ratio: float, round_to: int = 1) -> int:
    """Channels left after removing ``ratio`` of them, rounded up to a multiple of ``round_to``, at least one."""
    keep = channels * (1.0 - ratio)
    # The small tolerance keeps 64 * (1 - 0.5) from becoming 33 through float error.
    keep_int = max(1, math.ceil(keep - 1e-9))
    if round_to > 1:
        keep_int = max(round_to, math.ceil(keep_int / round_to) * round_to)
    return min(channels, keep_int)


# Kept channel counts are multiples of 8 unless a plan says otherwise, as in tune (TuneConfig.round_to):
# onnxruntime's CPU kernels block channels by 8, and an odd count can be slower than the unpruned layer.
DEFAULT_ROUND_TO = 8


@dataclass(frozen=True)
class CompressionPlan:
    """What to do to a model: remove a fraction of each group's channels, then export in a numeric format.

    ``ratios`` maps group (or stage) names to the fraction of channels removed, in [0, 1); unnamed groups are kept.
    ``float_fallback`` names groups whose layers stay in float in an int8 model. ``round_to`` keeps channel counts
    multiples of it (vector units like multiples of 4 or 8; 1 keeps the exact fraction).
    """

    ratios: Mapping[str, float] = field(default_factory=dict)
    quant: Quant = "fp32"
    float_fallback: tuple[str, ...] = ()
    round_to: int = DEFAULT_ROUND_TO

    def __post_init__(self) -> None:
        if not isinstance(self.ratios, Mapping):
            raise ConfigError(f"plan ratios must be a mapping of group name to ratio, got {type(self.ratios).__name__}")
        checked = {}
        for name, ratio in self.ratios.items():
            if not isinstance(name, str):
                raise ConfigError(f"plan ratio keys must be group names, got {name!r}")
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
                raise ConfigError(f"plan ratio for {name!r} is {ratio!r}; ratios are fractions removed, in [0, 1)")
            checked[name] = float(ratio)
        # Frozen and hashable-ish: a read-only view, so a plan cannot change after it named an artifact.
        object.__setattr__(self, "ratios", MappingProxyType(checked))
        if self.quant not in QUANT_MODES:
            raise ConfigError(f"plan quant is {self.quant!r}; choose one of {', '.join(QUANT_MODES)}")
        if isinstance(self.float_fallback, str) or not all(isinstance(n, str) for n in self.float_fallback):
            raise ConfigError("plan float_fallback must be a list of group names")
        object.__setattr__(self, "float_fallback", tuple(self.float_fallback))
        if self.float_fallback and self.quant != "int8":
            raise ConfigError(f"plan float_fallback applies to int8 models only (quant is {self.quant})")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"plan round_to is {self.round_to!r}; it must be a positive integer")

    def to_json(self) -> dict[str, Any]:
        return {
            "ratios": dict(self.ratios),
            "quant": self.quant,
            "float_fallback": list(self.float_fallback),
            "round_to": self.round_to,
        }

    @classmethod
    def from_json(cls, data: Any, space: SearchSpace | None = None) -> CompressionPlan:
        """A plan from its JSON form; with ``space``, also checked against the model's groups and stages."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a plan is a JSON object, got {type(data).__name__}")
        known = {"ratios", "quant", "float_fallback", "round_to"}
        extra = set(data) - known - {"groups", "stages", "comment"}  # templates carry the space for reading
        if extra:
            raise ConfigError(
                f"plan has unknown field(s) {', '.join(sorted(extra))}; known: {', '.join(sorted(known))}"
            )
        plan = cls(
            ratios=data.get("ratios", {}) or {},
            quant=data.get("quant", "fp32"),
            float_fallback=tuple(data.get("float_fallback", ()) or ()),
            round_to=data.get("round_to", DEFAULT_ROUND_TO),
        )
        if space is not None:
            plan.validate(space)
        return plan

    def validate(self, space: SearchSpace) -> CompressionPlan:
        """Raise ConfigError when the plan names groups or stages the space does not have."""
        space.group_ratios(self.ratios)
        unknown = [name for name in self.float_fallback if name not in space.group_names]
        if unknown:
            raise ConfigError(
                f"float_fallback names unknown group(s) {', '.join(map(repr, unknown))}; the model's "
                f"groups are {', '.join(space.group_names)}"
            )
        return self

    @property
    def is_identity(self) -> bool:
        return all(r == 0.0 for r in self.ratios.values())


def plan_template(space: SearchSpace) -> dict[str, Any]:
    """A plan naming every group with ratio 0 (nothing pruned), for a user to edit; the space rides along."""
    return {
        "comment": "ratios: fraction of each group's channels to remove, in [0, 1); a stage name sets all its groups",
        "ratios": {group.name: 0.0 for group in space.groups},
        "quant": "fp32",
        "float_fallback": [],
        "round_to": DEFAULT_ROUND_TO,
        "groups": {g.name: {"channels": g.channels, "modules": list(g.modules)} for g in space.groups},
        "stages": {k: list(v) for k, v in space.stages.items()},
    }


# --- the dependency graph -------------------------------------------------------------------------------------------


def dependency_graph(model: nn.Module, input_shape: Iterable[int]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``; ExportError when the model cannot be traced."""
    example = torch.zeros(tuple(input_shape))
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:
        raise ExportError(
            f"cannot trace the model for pruning ({type(exc).__name__}: {exc}); models with "
            "data-dependent control flow or custom autograd functions are not supported"
        ) from exc
    # The trace walks autograd back from the output, so a forward that leaves torch (numpy, .item(), .detach())
    # cuts layers off silently; pruning them would then break the model rather than shrink it.
    unreached = [name for name, m in model.named_modules() if isinstance(m, _PRUNABLE) and m not in graph.module2node]
    if unreached:
        raise ExportError(
            f"cannot trace the model for pruning: the autograd trace from its output does not reach "
            f"{', '.join(unreached[:5])}{' ...' if len(unreached) > 5 else ''} (does forward leave torch through "
            "numpy, .item() or .detach(), or hold unused layers?)"
        )
    return graph


def module_names(model: nn.Module, names: Iterable[str], what: str = "ignore") -> list[nn.Module]:
    """The modules named ``names``; ConfigError for a name the model does not have."""
    table = dict(model.named_modules())
    missing = [n for n in names if n not in table]
    if missing:
        raise ConfigError(f"{what} names module(s) the model does not have: {', '.join(missing)}")
    return [table[n] for n in names]


def _groups(model: nn.Module, graph: tp.DependencyGraph, ignore: Iterable[str]) -> list[tuple[Group, nn.Module]]:
    order = {module: index for index, (_, module) in enumerate(model.named_modules())}
    name_of = {module: name for name, module in model.named_modules()}
    ignored = module_names(model, ignore)
    # Everything inside an ignored module is ignored too: "layer4" keeps the whole stage.
    ignored_all = [sub for module in ignored for sub in module.modules()]
    found: list[tuple[Group, nn.Module]] = []
    for dg_group in graph.get_all_groups(ignored_layers=ignored_all, root_module_types=_PRUNABLE):
        producers, consumers = set(), set()
        for item in dg_group:
            module = item.dep.target.module
            if not isinstance(module, _PRUNABLE):
                continue
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                producers.add(module)
            elif graph.is_in_channel_pruning_fn(item.dep.handler):
                consumers.add(module)
        producers = {m for m in producers if m in name_of}
        if not producers:
            continue
        ordered = sorted(producers, key=order.__getitem__)
        root = ordered[0]
        pruner = graph.get_pruner_of_module(root)
        channels = pruner.get_out_channels(root)
        if channels is None or channels < 2:
            continue
        inputs_only = sorted((m for m in consumers - producers if m in name_of), key=order.__getitem__)
        group = Group(
            name=name_of[root],
            channels=int(channels),
            modules=tuple(name_of[m] for m in ordered),
            consumers=tuple(name_of[m] for m in inputs_only),
        )
        found.append((group, root))
    found.sort(key=lambda pair: order[pair[1]])
    return found


def _stages(model: nn.Module, input_shape: tuple[int, ...], roots: list[tuple[Group, nn.Module]]) -> dict:
    """Stages by the resolution of each group's first layer output: the usual meaning of 'stage' in a CNN."""
    sizes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [root.register_forward_hook(lambda m, i, o: sizes.__setitem__(m, tuple(o.shape[2:]))) for _, root in roots]
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    keys: list[tuple[int, ...]] = []
    for _, root in roots:
        if sizes.get(root, ()) not in keys:
            keys.append(sizes.get(root, ()))
    # Largest feature maps first; groups of linear layers (no spatial size) last, as the "head" stage.
    spatial = sorted((k for k in keys if k), key=lambda k: -math.prod(k))
    names = {k: f"stage{i + 1}" for i, k in enumerate(spatial)}
    names[()] = "head"
    stages: dict[str, list[str]] = {}
    for group, root in roots:
        stages.setdefault(names[sizes.get(root, ())], []).append(group.name)
    ordered = sorted(stages, key=lambda s: (s == "head", int(s[5:]) if s != "head" else 0))
    return {s: tuple(stages[s]) for s in ordered}


def search_space(
    model: nn.Module, input_shape: Iterable[int], ignore: Iterable[str] = (), coarsen: bool = False
) -> SearchSpace:
    """The prunable groups of ``model`` (layers in ``ignore`` and their coupled channels are left alone)."""
    shape = tuple(int(d) for d in input_shape)
    model = model.eval()
    graph = dependency_graph(model, shape)
    found = _groups(model, graph, tuple(ignore))
    stages = _stages(model, shape, found)
    return SearchSpace(groups=tuple(g for g, _ in found), stages=MappingProxyType(dict(stages)), coarse=coarsen)


def root_module(model: nn.Module, group: Group) -> nn.Module:
    return cast(nn.Module, dict(model.named_modules())[group.name])
