"""edgecompress compress: apply one compression plan to a model and write the artifact, the plan and a report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgecompress.cli._app import app, console, err_console
from edgecompress.errors import ConfigError

OUTPUT_FILES = ("model.onnx", "plan.json", "plan-template.json", "report.json")
FINETUNE_LR = 0.01  # compress's distillation rate (tune's between-round fine-tune has its own setting)


def _read_plan(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"plan file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"plan file {path} is not valid JSON: {exc}") from exc


def _check_output(output: Path, force: bool) -> list[Path]:
    """The files of an earlier run that --force will replace; ConfigError when they exist without --force."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} exists and is not a directory")
    clashes = [output / name for name in OUTPUT_FILES if (output / name).exists()]
    if clashes and not force:
        names = ", ".join(p.name for p in clashes)
        raise ConfigError(f"{output} already holds {names}; choose another folder or pass --force")
    return clashes


@app.command()
def compress(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for model.onnx, plan.json and report.json."),
    plan_file: Path | None = typer.Option(
        None, "--plan", help="Compression plan (JSON). Without it: the unchanged model and a plan template."
    ),
    example: str | None = typer.Option(None, "--example", help="Built-in workload: digits or fashion-mnist."),
    arch: str | None = typer.Option(
        None, "--arch", help="Reference network of the example (fashion-mnist: resnet or mobilenetv2)."
    ),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Folder with the Fashion-MNIST IDX files."),
    model: str | None = typer.Option(
        None, "--model", help="Model entry point package.module:attr returning (nn.Module, input_shape)."
    ),
    data: str | None = typer.Option(
        None, "--data", help="Data entry point package.module:attr returning train/val/calib (and metric)."
    ),
    quant: str | None = typer.Option(None, "--quant", help="Override the plan's numeric format: fp32, fp16, int8."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13-20); match the device's onnxruntime."),
    finetune_steps: int = typer.Option(
        0, "--finetune-steps", min=0, help="Knowledge-distillation steps after pruning (0: none)."
    ),
    val_limit: int | None = typer.Option(None, "--val-limit", min=1, help="Evaluate on the first N samples only."),
    coarsen: bool = typer.Option(False, "--coarsen", help="Template with one ratio per stage instead of per group."),
    force: bool = typer.Option(False, "--force", help="Replace the files of an earlier run in the output folder."),
    host_device: str = typer.Option(
        "auto", "--host-device", help="Where BatchNorm recalibration and fine-tuning run: auto, cpu, cuda or mps."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Prune, fine-tune, export and quantize a model per a plan; write the artifact, the plan and a report.

    Without --plan the model is exported unchanged and plan-template.json names every prunable group (channels
    coupled by residual connections prune together), ready to edit.
    """
    from edgecompress.compress import CompressionPlan, model_cost, plan_template, resolve_host_device, search_space
    from edgecompress.compress._build import first_batch
    from edgecompress.compress._export import check_opset, max_abs_diff
    from edgecompress.search import build_candidate
    from edgecompress.workload import load_workload

    check_opset(opset)
    device = resolve_host_device(host_device)
    raw_plan = _read_plan(plan_file) if plan_file is not None else None
    stale = _check_output(output, force)
    started = time.perf_counter()
    with err_console.status("loading the workload"):
        workload = load_workload(
            example=example, model=model, data=data, data_dir=data_dir, arch=arch, val_limit=val_limit
        )
        base = workload.build_model()
        space = search_space(base, workload.input_shape, workload.ignore, coarsen=coarsen)
    if raw_plan is None:
        plan = CompressionPlan(quant=quant or "fp32")  # type: ignore[arg-type]
    else:
        if quant is not None:
            raw_plan = {**raw_plan, "quant": quant}
        plan = CompressionPlan.from_json(raw_plan, space)
    with err_console.status("building the candidate") as status:
        pruned, candidate = build_candidate(
            base,
            plan,
            workload,
            space,
            opset,
            teacher=base,
            finetune_steps=finetune_steps,
            finetune_lr=FINETUNE_LR,
            on_stage=status.update,
            device=device,
        )
        artifact, score = candidate.artifact, candidate.accuracy
        fp32_diff = max_abs_diff(artifact.data, pruned, first_batch(workload)) if plan.quant == "fp32" else None
    macs_before, params_before = model_cost(base, workload.input_shape)
    report = {
        "workload": workload.name,
        "model": str(output / "model.onnx"),
        "sha256": artifact.sha256,
        "size_bytes": artifact.size_bytes,
        "opset": opset,
        "quant": plan.quant,
        "metric": score,
        "macs_before": macs_before,
        "macs_after": candidate.macs,
        "params_before": params_before,
        "params_after": candidate.params,
        "finetune_steps": finetune_steps,
        "onnx_vs_torch_max_abs_diff": fp32_diff,
        "groups": len(space.groups),
        "plan": plan.to_json(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    template = None if raw_plan is not None else plan_template(space)
    if template is not None and coarsen:
        template["ratios"] = {stage: 0.0 for stage in space.stages}
    _write_outputs(output, stale, artifact, plan.to_json(), template, report)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, workload.name, output, template is not None)


def _write_outputs(
    output: Path,
    stale: list[Path],
    artifact: Any,
    plan: dict[str, Any],
    template: dict[str, Any] | None,
    report: dict[str, Any],
) -> None:
    # The folder is touched only now, so a run that fails early leaves nothing behind.
    output.mkdir(parents=True, exist_ok=True)
    for path in stale:  # with --force: files of the earlier run must not sit beside the new ones
        path.unlink()
    artifact.write(output / "model.onnx")
    (output / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    if template is not None:
        (output / "plan-template.json").write_text(json.dumps(template, indent=2) + "\n")
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def _print_report(report: dict[str, Any], workload: str, output: Path, with_template: bool) -> None:
    table = Table(title=f"{workload} -> {output / 'model.onnx'}", title_justify="left", show_header=False)
    table.add_row("metric (validation)", f"{report['metric']:.4f}")
    before, after = report["macs_before"], report["macs_after"]
    table.add_row("MACs", f"{before:,} -> {after:,} ({1 - after / before:.1%} fewer)")
    table.add_row("parameters", f"{report['params_before']:,} -> {report['params_after']:,}")
    table.add_row(
        "artifact",
        f"{report['size_bytes']:,} bytes, {report['quant']}, opset {report['opset']}, sha256 {report['sha256'][:12]}",
    )
    if report["onnx_vs_torch_max_abs_diff"] is not None:
        table.add_row("ONNX vs torch", f"max abs diff {report['onnx_vs_torch_max_abs_diff']:.2e}")
    if with_template:
        table.add_row("plan template", f"{output / 'plan-template.json'} ({report['groups']} groups)")
    console.print(table)
