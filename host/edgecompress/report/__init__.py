"""Reports of edgecompress results: JUnit XML and Markdown for CI, JSON for machines and later baselines, HTML
for people (a tune run's report.html; one model's page for bench, check and validate)."""

from edgecompress.report._files import check_report_target, write_text
from edgecompress.report._html import (
    REPORT_FILE,
    bench_report_html,
    check_report_html,
    group_channels,
    library_versions,
    load_results,
    paired_decisions,
    tune_report_html,
    write_html,
    write_tune_report,
    write_tune_report_or_warn,
)
from edgecompress.report._json import result_json, write_result_json
from edgecompress.report._junit import junit_error_xml, junit_xml, write_junit, write_junit_error
from edgecompress.report._markdown import markdown_summary, write_markdown, write_markdown_error
from edgecompress.report._validate import (
    validate_report_html,
    validation_json,
    validation_markdown,
    with_validation_case,
)

__all__ = [
    "REPORT_FILE",
    "bench_report_html",
    "check_report_html",
    "check_report_target",
    "group_channels",
    "library_versions",
    "load_results",
    "paired_decisions",
    "tune_report_html",
    "write_html",
    "write_tune_report",
    "write_tune_report_or_warn",
    "junit_error_xml",
    "junit_xml",
    "markdown_summary",
    "result_json",
    "write_result_json",
    "write_junit",
    "write_junit_error",
    "write_markdown",
    "write_markdown_error",
    "write_text",
    "validate_report_html",
    "validation_json",
    "validation_markdown",
    "with_validation_case",
]
