"""Reports of a parity check (``edgecompress validate``, ``check --validate``): its HTML page, its JUnit test case
beside a check's, its Markdown lines."""

from __future__ import annotations

import math
import platform
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from edgecompress.report import _plots as plots
from edgecompress.report._page import Raw, fig, kv_table, para, pre, table
from edgecompress.report._page import page as html_page
from edgecompress.validate import ValidationResult

CASE_NAME = "validate: device outputs match the host's"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _diff_histogram(result: ValidationResult) -> str:
    """Samples by their largest absolute output difference (log bins); exact matches counted in the legend."""
    values = np.asarray(result.sample_max_abs_diff, dtype=np.float64)
    exact = int(np.count_nonzero(values == 0))
    positive = values[(values > 0) & np.isfinite(values)]
    with plots.figure(6.4, 3.2) as (figure, (ax,)):
        low, high = float(positive.min()), float(positive.max())
        bins = np.geomspace(low, high * 1.0001 if high > low else low * 1.01, 50)
        ax.hist(positive, bins=bins, color=plots.FINAL, alpha=0.6, label=f"{positive.size} samples differ")
        ax.hist([], color="#444444", label=f"{exact} samples identical")
        ax.set_xscale("log")
        ax.set_xlabel("largest |device - host| over a sample's outputs (log)")
        ax.set_ylabel("samples")
        ax.grid(alpha=0.25)
        ax.legend(frameon=False)
        return plots.svg(figure)


def validate_report_html(result: ValidationResult, command: str = "") -> str:
    """The page of one ``validate``: verdict, figures, the distribution of differences, the disagreeing samples."""
    verdict = ("passed", "ok") if result.passed else ("FAILED", "bad")
    figures = kv_table(
        [
            ("top-1 agreement", f"{_pct(result.agreement)} ({result.agreeing}/{result.samples} samples)"),
            ("minimum agreement", _pct(result.min_agreement)),
            ("max |device - host|", f"{result.max_abs_diff:.4g}"),
            ("mean |device - host|", f"{result.mean_abs_diff:.4g}"),
            ("outputs finite on one side only", result.nonfinite_mismatches),
            ("accuracy on the host", _pct(result.host_accuracy)),
            ("accuracy on the device", _pct(result.device_accuracy)),
        ]
    )
    values = [v for v in result.sample_max_abs_diff if v > 0 and math.isfinite(v)]
    if values:
        differences = fig(_diff_histogram(result), "Per sample, the largest absolute difference of its outputs.")
    else:
        differences = para("The device's outputs are identical to the host's on every sample.")
    listed = (
        table(
            ("sample", "label", "host class", "device class"),
            [[d.index, "" if d.label is None else d.label, d.host_class, d.device_class] for d in result.disagreements],
            sortable=True,
        )
        if result.disagreements
        else para("None: every sample has the same top-1 class on both sides.")
    )
    if result.samples - result.agreeing > len(result.disagreements):
        listed = Raw(listed + para(f"The first {len(result.disagreements)} are listed.", "muted"))
    facts = kv_table(
        [
            ("model", result.model),
            ("sha256", result.sha256),
            ("format", result.format),
            ("device", f"{result.device} ({result.board})"),
            ("device runtime", f"{result.device_runtime} ({', '.join(result.providers)})"),
            ("host runtime", result.host_runtime),
            ("samples", f"{result.samples} in {result.requests} requests, inference batch {result.batch}"),
            ("seed", result.seed),
            ("inputs sha256", result.inputs_sha256),
            ("time", f"{result.elapsed_s:.1f} s"),
        ]
    )
    sections = [
        ("figures", "Agreement and differences", Raw(figures + differences)),
        ("disagreements", f"Disagreeing samples ({result.samples - result.agreeing})", listed),
        ("model", "Model, device, runtimes", Raw(facts + "<h3>Command</h3>" + pre(command))),
    ]
    subtitle = [
        Raw(f'<span class="verdict {verdict[1]}">{verdict[0]}</span>'),
        f"{result.model} on {result.device}: {result.describe()}",
    ]
    return html_page(f"edgecompress validate: {result.model}", subtitle, sections)


def with_validation_case(junit: str, result: ValidationResult | None, error: str | None = None) -> str:
    """A check's JUnit XML with the parity check as one more test case: passed, failed, or in error (``error``)."""
    root = ET.fromstring(junit.split("?>", 1)[1] if junit.startswith("<?xml") else junit)
    suite = root.find("testsuite")
    if suite is None:  # a document of the check's own always has one; keep the case anyway
        suite = ET.SubElement(root, "testsuite", {"name": "edgecompress check", "hostname": platform.node()})
    classname = next((c.get("classname") for c in suite.iter("testcase")), None) or "edgecompress.check"
    case = ET.Element("testcase", {"classname": classname, "name": CASE_NAME, "time": "0"})
    counter = None
    if error is not None:
        ET.SubElement(case, "error", {"message": error, "type": "validate"}).text = error
        counter = "errors"
    else:
        assert result is not None
        case.set("time", f"{result.elapsed_s:.3f}")
        if result.passed:
            ET.SubElement(case, "system-out").text = result.describe()
        else:
            ET.SubElement(case, "failure", {"message": result.describe(), "type": "validate"}).text = result.describe()
            counter = "failures"
    position = next((i for i, child in enumerate(suite) if child.tag == "system-out"), len(suite))
    suite.insert(position, case)
    for element in (root, suite):
        element.set("tests", str(int(element.get("tests", "0")) + 1))
        if counter:
            element.set(counter, str(int(element.get(counter, "0")) + 1))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def validation_markdown(result: ValidationResult | None, error: str | None = None) -> str:
    """Lines to append to a check's Markdown summary."""
    if error is not None:
        return f"\n⚠️ validate: could not run: {error}\n"
    assert result is not None
    icon = "✅" if result.passed else "❌"
    return (
        f"\n{icon} validate: {result.describe()} ({result.samples} samples, device {result.device_runtime}, "
        f"host {result.host_runtime})\n"
    )


def validation_json(result: ValidationResult | None, error: str | None = None) -> dict[str, Any]:
    """The parity check's entry in a check's JSON result."""
    return {"error": error} if error is not None else (result.to_json() if result else {})
