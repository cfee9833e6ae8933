"""A Markdown summary of one check, fit for a CI job summary (``$GITHUB_STEP_SUMMARY``, a GitLab MR note)."""

from __future__ import annotations

from pathlib import Path

from edgecompress.budgets import format_value
from edgecompress.gate import CheckResult
from edgecompress.report._files import write_text

_ICON = {"pass": "✅", "fail": "❌", "error": "⚠️", "skipped": "➖", "inconclusive": "❔"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(result: CheckResult) -> str:
    """Verdict, budgets table, regression table, device and model facts, notes."""
    verdict = {0: "passed", 1: "FAILED", 2: "could not be checked"}[result.exit_code]
    lines = [
        f"### {_ICON['pass'] if result.passed else _ICON['fail']} edgecompress check: "
        f"`{_cell(result.model)}` on `{_cell(result.device)}` {verdict}",
        "",
    ]
    if result.budgets:
        lines += ["| | budget | measured | limit |", "|---|---|---|---|"]
        for b in result.budgets:
            lines.append(
                f"| {_ICON[b.status]} | `{_cell(b.budget)}` | {format_value(b.value, b.unit)} | "
                f"{format_value(b.target, b.unit)} |"
            )
        lines.append("")
    else:
        lines += ["No budgets were given.", ""]
    if result.baseline is not None:
        base = result.baseline
        lines.append(
            f"Baseline: {_cell(str(base.get('source')))} (`{str(base.get('sha256'))[:12]}`, {base.get('started_utc')})."
        )
        lines.append("")
    lines += ["| | regression | baseline | now | ratio | CI | p | tolerance |", "|---|---|---|---|---|---|---|---|"]
    for r in result.regressions:
        if r.result is None:
            lines.append(f"| {_ICON[r.status]} | {r.metric} | | | | | | {_cell(r.message)} |")
            continue
        x = r.result
        unit = "bytes" if r.metric == "size" else "ms"
        ci = "exact" if x.method == "exact" else f"{x.ci_low:.3f}–{x.ci_high:.3f} ({x.confidence:.0%})"
        if x.method == "paired":
            ci += f", {x.baseline_runs} alternating rounds"
        elif x.baseline_runs:
            ci += f", {x.baseline_runs} baseline runs"
        test = "paired t" if x.method == "paired" else "Mann-Whitney"
        p_value = "" if x.p_value is None else f"{x.p_value:.2g} ({test})"
        lines.append(
            f"| {_ICON[r.status]} | {r.metric} | {format_value(x.baseline_value, unit)} | "
            f"{format_value(x.current_value, unit)} | **{x.ratio:.3f}** | {ci} | {p_value} | "
            f"{x.tolerance:.0%} |"
        )
    lines.append("")
    latency = result.latency
    lines.append(
        f"<sub>{result.latency.get('count')} runs: p50 {latency.get('p50_ms', 0):.3f} ms, "
        f"p99 {latency.get('p99_ms', 0):.3f} ms, max {latency.get('max_ms', 0):.3f} ms · model `{result.sha256[:12]}` "
        f"{format_value(result.size_bytes, 'bytes')} · {_cell(str(result.board))} · {result.runtime} "
        f"{result.runtime_version} ({', '.join(result.providers)}) · {result.started_utc}</sub>"
    )
    if result.notes:
        lines += [""] + [f"- {_cell(note)}" for note in result.notes]
    return "\n".join(lines) + "\n"


def write_markdown(result: CheckResult, path: str | Path) -> Path:
    return write_text(path, markdown_summary(result))


def write_markdown_error(model: str, device: str, message: str, path: str | Path) -> Path:
    """The summary of a check that never measured: the device or agent failed."""
    return write_text(
        path,
        f"### {_ICON['error']} edgecompress check: `{_cell(model)}` on `{_cell(device)}` "
        f"could not run\n\n{_cell(message)}\n",
    )
