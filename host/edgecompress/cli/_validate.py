"""edgecompress validate: the same inputs through the model on the device and on the host, compared."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from edgecompress.artifact import Artifact, load_artifact
from edgecompress.cli._app import app, console, err_console
from edgecompress.cli._device_options import accept_new_host_option
from edgecompress.config import DeviceProfile, resolve_device
from edgecompress.device import check_runtime, open_session
from edgecompress.errors import ConfigError, DeviceError
from edgecompress.gate import CheckResult
from edgecompress.report import (
    junit_xml,
    markdown_summary,
    validation_json,
    validation_markdown,
    with_validation_case,
    write_text,
)
from edgecompress.validate import DEFAULT_MIN_AGREEMENT, DEFAULT_SAMPLES, ValidationResult, validate_model

if TYPE_CHECKING:
    from edgecompress.workload import LabelledData

# (result, None), or (None, why the device failed): the parity check of check --validate.
Parity = tuple[ValidationResult | None, str | None]

VALIDATE_EXIT_CODES = (
    "Exit codes: 0 the device's top-1 classes agree with the host's on at least --min-agreement of the samples; "
    "1 they do not (or an output is finite on one side only); 2 usage, configuration or data error (a model whose "
    "sha256 is not --sha256, among others); 3 device unreachable or agent failure (a cached model whose bytes no "
    "longer match its sha256, among others). See docs/validate.md."
)


def check_sha256(artifact: Artifact, model: Path, expected: str | None) -> None:
    """A ConfigError when the model file is not the expected bytes."""
    if expected is not None and artifact.sha256 != expected.strip().lower():
        raise ConfigError(
            f"{model} hashes to {artifact.sha256}, not the expected {expected}: another model under the same name"
        )


def run_validation(
    profile: DeviceProfile,
    artifact: Artifact,
    data: LabelledData,
    *,
    model_name: str,
    samples: int,
    batch: int | None,
    threads: int | None,
    min_agreement: float,
    seed: int,
    accept_new_host: bool,
) -> ValidationResult:
    """Open the device, check it can run the model, validate with a progress bar; the session is closed after."""
    # The profile's providers belong to its runtime: a .tflite model on an ONNX profile runs on the interpreter.
    providers = tuple(profile.runtime.providers) if artifact.runtime == profile.runtime.name else ()
    session = open_session(
        profile, on_event=lambda m: err_console.print(f"[yellow]{m}[/]"), accept_new_host=accept_new_host
    )
    try:
        check_runtime(profile, session.hello(), runtime=artifact.runtime, model=artifact.data)
        with err_console.status(f"validating {model_name} on {profile.name}") as status:
            return validate_model(
                session,
                artifact,
                data,
                samples,
                threads=threads or profile.runtime.threads,
                providers=providers,
                batch=batch,
                min_agreement=min_agreement,
                seed=seed,
                model_name=model_name,
                device_name=profile.name,
                on_progress=lambda done, total: status.update(
                    f"validating {model_name} on {profile.name}: {done}/{total} samples"
                ),
            )
    finally:
        session.close()


@app.command(epilog=VALIDATE_EXIT_CODES)
def validate(
    model: Path = typer.Argument(..., help="The .onnx or .tflite model to validate."),
    device: str = typer.Option("local", "--device", "-d", help="Profile name, .toml file, or user@host[:port]."),
    example: str | None = typer.Option(None, help="Samples from a built-in example: digits or fashion-mnist."),
    data: str | None = typer.Option(
        None, help="Samples from a data entry point package.module:attribute (its val batches and metric)."
    ),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST's folder (default: Debian's dataset package)."),
    samples: int = typer.Option(DEFAULT_SAMPLES, min=1, help="Compare on the first N validation samples."),
    min_agreement: float = typer.Option(
        DEFAULT_MIN_AGREEMENT, min=0, max=1, help="Fail below this fraction of samples with the same top-1 class."
    ),
    batch: int | None = typer.Option(
        None, min=1, help="Inference batch on both sides (default: the model's fixed batch, else 1)."
    ),
    threads: int | None = typer.Option(None, min=1, help="Runtime threads on the device (default: the profile's)."),
    seed: int = typer.Option(0, help="Torch seed while reading the data (a shuffling loader then reads alike)."),
    sha256: str | None = typer.Option(None, "--sha256", help="Refuse the model unless its bytes hash to this."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    html: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML page here."),
    accept_new_host: bool = accept_new_host_option(),
) -> None:
    """Run the same samples through MODEL on the device and on the host (the same bytes): top-1 agreement, output
    differences, and accuracy on each side."""
    profile = resolve_device(device)
    artifact = load_artifact(model)
    check_sha256(artifact, model, sha256)
    from edgecompress.workload import load_labelled_data  # torch: imported only by the commands that read data

    labelled = load_labelled_data(example=example, data=data, data_dir=data_dir)
    if html is not None:
        from edgecompress.report import check_report_target

        check_report_target(html)  # a page that cannot be written fails now, not after the device time
    result = run_validation(
        profile,
        artifact,
        labelled,
        model_name=model.name,
        samples=samples,
        batch=batch,
        threads=threads,
        min_agreement=min_agreement,
        seed=seed,
        accept_new_host=accept_new_host,
    )
    if html is not None:
        from edgecompress.report import validate_report_html, write_html

        page = validate_report_html(result, shlex.join(["edgecompress", *sys.argv[1:]]))
        err_console.print(f"HTML page written to {write_html(page, html)}", highlight=False)
    if str(html) != "-":  # stdout holds the page otherwise
        if as_json:
            print(json.dumps(result.to_json(), indent=2))
        else:
            print_validation(result)
    if not result.passed:
        err_console.print(f"FAIL validate: {result.describe()}", highlight=False, soft_wrap=True, markup=False)
    sys.exit(result.exit_code)


def print_validation(result: ValidationResult) -> None:
    table = Table(title=f"{result.model} on {result.device} ({result.board})", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("device runtime", f"{result.device_runtime} ({', '.join(result.providers)})")
    table.add_row("host runtime", result.host_runtime)
    table.add_row("samples", f"{result.samples} ({result.requests} requests, batch {result.batch})")
    table.add_row("top-1 agreement", f"{result.agreement:.2%} ({result.agreeing}/{result.samples})")
    table.add_row("max |device - host|", f"{result.max_abs_diff:.4g}")
    table.add_row("mean |device - host|", f"{result.mean_abs_diff:.4g}")
    if result.host_accuracy is not None and result.device_accuracy is not None:
        table.add_row("accuracy on the host", f"{result.host_accuracy:.2%}")
        table.add_row("accuracy on the device", f"{result.device_accuracy:.2%}")
    if result.nonfinite_mismatches:
        table.add_row("outputs finite on one side only", str(result.nonfinite_mismatches))
    console.print(table)
    verdict = "[green]passed[/]" if result.passed else "[red]failed[/]"
    console.print(f"{verdict} (minimum agreement {result.min_agreement:.2%})")


# -- check --validate ----------------------------------------------------------------------------------------------


def labelled_for_check(
    validate: bool, example: str | None, data: str | None, data_dir: str | None
) -> LabelledData | None:
    """The samples ``check --validate`` compares on, read before any device time; None without --validate."""
    if not validate:
        if example or data or data_dir:
            raise ConfigError("--example, --data and --data-dir choose the samples of --validate; add --validate")
        return None
    if not example and not data:
        raise ConfigError("--validate needs samples: --example NAME or --data package.module:attribute")
    from edgecompress.workload import load_labelled_data

    return load_labelled_data(example=example, data=data, data_dir=data_dir)


def validate_after_check(
    profile: DeviceProfile,
    artifact: Artifact,
    labelled: LabelledData,
    *,
    model_name: str,
    samples: int,
    min_agreement: float,
    accept_new_host: bool,
) -> Parity:
    """The parity check of ``check --validate``: (result, None), or (None, why) when the device failed."""
    try:
        validation = run_validation(
            profile,
            artifact,
            labelled,
            model_name=model_name,
            samples=samples,
            batch=None,
            threads=None,
            min_agreement=min_agreement,
            seed=0,
            accept_new_host=accept_new_host,
        )
    except DeviceError as exc:
        return None, str(exc)
    return validation, None


def with_parity(result: CheckResult, parity: Parity) -> CheckResult:
    """The check's result with the parity check in its JSON (``extra.validation``), so history and CI keep it."""
    return replace(result, extra={**result.extra, "validation": validation_json(*parity)})


def write_check_junit(result: CheckResult, parity: Parity, path: str) -> None:
    write_text(path, with_validation_case(junit_xml(result), *parity))


def write_check_markdown(result: CheckResult, parity: Parity, path: str) -> None:
    write_text(path, markdown_summary(result) + validation_markdown(*parity))


def print_parity(parity: Parity) -> None:
    validation, error = parity
    if error is not None:
        console.print(f"validate: [yellow]error[/] {escape(error)}", highlight=False)
    elif validation is not None:
        verdict = "[green]pass[/]" if validation.passed else "[red]FAIL[/]"
        console.print(f"validate: {verdict} {escape(validation.describe())}", highlight=False)


def print_parity_problem(parity: Parity) -> None:
    """One line on stderr when the parity check failed or could not run, as check names its failures."""
    validation, error = parity
    if error is not None:
        err_console.print(f"ERROR validate: {error}", highlight=False, soft_wrap=True, markup=False)
    elif validation is not None and not validation.passed:
        err_console.print(f"FAIL validate: {validation.describe()}", highlight=False, soft_wrap=True, markup=False)


def combined_exit_code(check_code: int, parity: Parity) -> int:
    """The check's exit code, unless the parity check did not pass: 1 when it failed, 3 when the device failed (a
    failed budget stays 1)."""
    validation, error = parity
    code = 3 if error is not None else (validation.exit_code if validation is not None else 0)
    if code == 0 or check_code == 1:
        return check_code
    return code
