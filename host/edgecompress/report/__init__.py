"""Reports of edgecompress results: JUnit XML and Markdown for CI, JSON for machines and later baselines."""

from edgecompress.report._files import write_text
from edgecompress.report._json import result_json, write_json
from edgecompress.report._junit import junit_error_xml, junit_xml, write_junit, write_junit_error
from edgecompress.report._markdown import markdown_summary, write_markdown, write_markdown_error

__all__ = [
    "junit_error_xml", "junit_xml", "markdown_summary", "result_json", "write_json", "write_junit", "write_junit_error",
    "write_markdown", "write_markdown_error", "write_text",
]
