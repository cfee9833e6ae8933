"""JUnit XML for CI test reports: one test case per budget and one per regression metric.

Written with the standard library (no runtime dependency); the tests read it back with junitparser, as CI servers
would. A passing case carries its figures in ``system-out`` (JUnit has no message on success), a failing one in the
``failure`` message; a budget that could not be measured is an ``error``, a regression test without a baseline is
``skipped``.
"""

from __future__ import annotations

import platform
import xml.etree.ElementTree as ET
from pathlib import Path

from edgecompress.gate import BudgetOutcome, CheckResult, RegressionOutcome
from edgecompress.report._files import write_text


def _case(suite: ET.Element, classname: str, outcome: BudgetOutcome | RegressionOutcome) -> None:
    name = f"budget {outcome.budget}" if isinstance(outcome, BudgetOutcome) else f"regression {outcome.metric}"
    case = ET.SubElement(suite, "testcase", {"classname": classname, "name": name, "time": "0"})
    kind = "budget" if isinstance(outcome, BudgetOutcome) else "regression"
    if outcome.status == "fail":
        ET.SubElement(case, "failure", {"message": outcome.message, "type": kind}).text = outcome.message
    elif outcome.status == "inconclusive":
        ET.SubElement(case, "failure", {"message": outcome.message, "type": "inconclusive"}).text = outcome.message
    elif outcome.status == "error":
        ET.SubElement(case, "error", {"message": outcome.message, "type": kind}).text = outcome.message
    elif outcome.status == "skipped":
        ET.SubElement(case, "skipped", {"message": outcome.message})
    else:
        ET.SubElement(case, "system-out").text = outcome.message


def junit_xml(result: CheckResult) -> str:
    """The JUnit XML document of one check."""
    outcomes = result.outcomes
    counts = {
        status: sum(o.status == status for o in outcomes) for status in ("fail", "error", "skipped", "inconclusive")
    }
    counts["fail"] += counts["inconclusive"]  # a JUnit failure: CI must not read it as a pass
    totals = {
        "tests": str(len(outcomes)),
        "failures": str(counts["fail"]),
        "errors": str(counts["error"]),
        "skipped": str(counts["skipped"]),
    }
    window_s = float(result.extra.get("window_s") or 0.0)
    root = ET.Element("testsuites", {"name": "edgecompress check", **totals, "time": f"{window_s:.3f}"})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": f"edgecompress check {result.model} on {result.device}",
            **totals,
            "time": f"{window_s:.3f}",
            "timestamp": result.started_utc,
            "hostname": platform.node() or "host",
        },
    )
    properties = ET.SubElement(suite, "properties")
    facts = {
        "model": result.model,
        "model_path": result.model_path,
        "sha256": result.sha256,
        "size_bytes": result.size_bytes,
        "device": result.device,
        "board": result.board,
        "runtime": result.runtime,
        "runtime_version": result.runtime_version,
        "providers": ",".join(result.providers),
        "agent_version": result.agent_version,
        "runs": result.latency.get("count"),
        "baseline": None if result.baseline is None else result.baseline.get("source"),
    }
    for key, value in facts.items():
        if value is not None:
            ET.SubElement(properties, "property", {"name": key, "value": str(value)})
    classname = f"edgecompress.check.{result.device}"
    for outcome in outcomes:
        _case(suite, classname, outcome)
    if result.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(result.notes)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(result: CheckResult, path: str | Path) -> Path:
    return write_text(path, junit_xml(result))


def junit_error_xml(model: str, device: str, message: str, case_name: str = "device") -> str:
    """JUnit XML for a check that never measured: one case in error (``device``: the device or agent failed;
    ``budgets``: a budget this device cannot measure)."""
    attributes = {"tests": "1", "failures": "0", "errors": "1", "skipped": "0", "time": "0"}
    root = ET.Element("testsuites", {"name": "edgecompress check", **attributes})
    suite = ET.SubElement(root, "testsuite", {"name": f"edgecompress check {model} on {device}", **attributes})
    case = ET.SubElement(
        suite, "testcase", {"classname": f"edgecompress.check.{device}", "name": case_name, "time": "0"}
    )
    ET.SubElement(case, "error", {"message": message, "type": case_name}).text = message
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit_error(model: str, device: str, message: str, path: str | Path, case_name: str = "device") -> Path:
    return write_text(path, junit_error_xml(model, device, message, case_name))
