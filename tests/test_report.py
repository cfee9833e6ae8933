"""The HTML reports in a real browser: a small real tune run (made once for the module), rendered by headless
Chromium over the DevTools protocol; report and dashboard commands; bench and check pages.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import Browser, chromium_path
from typer.testing import CliRunner

from edgecompress.analysis import pwcet
from edgecompress.cli import app
from edgecompress.errors import ConfigError
from edgecompress.report import _plots as plots
from edgecompress.report import (
    check_report_target,
    load_results,
    tune_report_html,
    write_html,
    write_tune_report_or_warn,
)
from edgecompress.report._html import _energy_section, _summary

needs_chromium = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (.ci/run installs it)")
BUDGETS = ("latency.p50<=1.5x", "size<=0.8x")
# The figures each page must show, by section: a blank or failed plot fails the test.
TUNE_FIGURES = {"search": len(BUDGETS), "schedule": 1, "progress": 1, "latency": 2}
FIGURES_JS = """
Array.from(document.querySelectorAll('.fig svg')).map(function (svg) {
  var box = svg.getBoundingClientRect();
  return {section: svg.closest('section').id, width: box.width, height: box.height,
          drawn: svg.querySelectorAll('path, use').length,
          markers: svg.querySelectorAll('[id^="PathCollection"] use').length};
})
"""


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return dict(os.environ, XDG_CACHE_HOME=str(cache), COLUMNS="160")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, env) -> Path:
    """One real tune run on the local device: digits, one round of three trials, short measurements.

    It is stopped with Ctrl-C after its first trial (the report written then is kept as stopped-report.html beside
    the run folder) and resumed to the end, which writes the final report.
    """
    out = tmp_path_factory.mktemp("tune") / "run"
    budgets = [arg for b in BUDGETS for arg in ("--budget", b)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecompress",
            "tune",
            "--example",
            "digits",
            *budgets,
            "--rounds",
            "1",
            "--trials-per-round",
            "3",
            "--runs",
            "40",
            "--min-seconds",
            "0.05",
            "--warmup-seconds",
            "0.05",
            "--finetune-steps",
            "5",
            "--val-limit",
            "200",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip().startswith("#0"):  # the first trial finished: stop after the one in flight
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    shutil.copy(out / "report.html", out.parent / "stopped-report.html")
    done = run_cli("tune", "--resume", str(out), env=env)
    assert done.returncode in (0, 1), done.stderr  # met or not met: both are finished runs with a report
    return out


def test_a_run_stopped_with_ctrl_c_still_writes_its_report(run_dir):
    page = (run_dir.parent / "stopped-report.html").read_text(encoding="utf-8")
    assert "stopped before the last round finished" in page
    assert 'id="trials-table"' in page and page.count("<svg") >= 3


def test_every_tune_run_writes_a_self_contained_report(run_dir):
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    results = load_results(run_dir)
    for anchor in (
        "summary",
        "search",
        "schedule",
        "progress",
        "latency",
        "energy",
        "plan",
        "rounds",
        "trials",
        "drift",
        "environment",
    ):
        assert f'id="{anchor}"' in page
    # Nothing fetched from anywhere: no external scripts, styles, images or fonts.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)
    assert "url(http" not in page and "@import" not in page
    assert page.count("<svg") >= sum(TUNE_FIGURES.values())
    assert "edgecompress tune --example digits" in page  # the exact command
    assert results["host"]["torch"] and results["host"]["onnxruntime"]  # host versions recorded with the results
    groups = results["rounds"][0]["groups"]
    assert groups and all(g["after"] <= g["before"] for g in groups)
    for g in groups:  # channels before and after, per group, in the plan table
        assert f"<td>{g['group']}</td>" in page
    assert results["base"]["observation"]["measurement"]["latencies_ns"]  # the original's raw sample


@needs_chromium
def test_the_report_renders_in_chromium_with_plots_and_sortable_tables(run_dir, tmp_path):
    with Browser() as browser:
        browser.load((run_dir / "report.html").resolve().as_uri())
        figures = browser.evaluate(FIGURES_JS)
        for section, count in TUNE_FIGURES.items():
            drawn = [f for f in figures if f["section"] == section]
            assert len(drawn) == count, (section, figures)
            for f in drawn:
                assert f["width"] > 200 and f["height"] > 150 and f["drawn"] > 20, f
        # The accuracy-against-budget plots hold a marker per measured trial plus the original.
        search = [f for f in figures if f["section"] == "search"]
        assert all(f["markers"] >= 2 for f in search), search

        def column(name: str) -> list[str]:
            return browser.evaluate(f"""(function () {{
                var table = document.getElementById('trials-table');
                var i = Array.from(table.tHead.rows[0].cells).findIndex(function (c) {{
                    return c.textContent.replace(/[\\u25B2\\u25BC]/g, '').trim() === '{name}'; }});
                return Array.from(table.tBodies[0].rows).map(function (r) {{
                    var c = r.cells[i]; return c.getAttribute('data-v'); }});
            }})()""")

        def click(name: str) -> None:
            browser.evaluate(f"""Array.from(document.querySelectorAll('#trials-table th')).find(function (c) {{
                return c.textContent.trim() === '{name}'; }}).click()""")

        before = column("accuracy")
        assert len(before) == 3
        click("accuracy")
        ascending = [float(v) for v in column("accuracy") if v]
        assert ascending == sorted(ascending)
        click("accuracy")
        descending = [float(v) for v in column("accuracy") if v]
        assert descending == sorted(ascending, reverse=True)
        assert browser.console_errors() == []
        shot = browser.screenshot(tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_report_command_regenerates_the_page(run_dir, tmp_path):
    out = tmp_path / "again.html"
    done = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out)])
    assert done.exit_code == 0, done.output
    again = out.read_text(encoding="utf-8")
    first = (run_dir / "report.html").read_text(encoding="utf-8")
    assert again.count("<svg") == first.count("<svg") and again.count("<td") == first.count("<td")
    with pytest.raises(ConfigError, match="is not a folder"):
        load_results(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="results.json does not exist"):
        load_results(tmp_path)


def test_a_stopped_run_from_an_older_version_still_renders(run_dir):
    results = copy.deepcopy(load_results(run_dir))
    results["final"] = None  # what a run stopped with Ctrl-C before its last round finished leaves
    del results["host"]  # and what older versions did not record
    results["base"].pop("observation")
    for r in results["rounds"]:
        r.pop("groups")
    page = tune_report_html(results)
    assert "stopped before the last round finished" in page
    assert "Host library versions were not recorded" in page
    assert "Channel counts per group were not recorded" in page
    assert "the original&#x27;s raw sample is not in results.json" in page


def test_a_report_that_cannot_be_written_is_a_warning(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    warnings: list[str] = []
    assert write_tune_report_or_warn(tmp_path, warn=warnings.append) is None
    assert len(warnings) == 1 and "edgecompress report" in warnings[0]
    assert not (tmp_path / "report.html").exists()


def test_a_report_path_that_is_a_folder_is_refused_with_the_fix(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    for attempt in (lambda: check_report_target(folder), lambda: write_html("<html></html>", folder)):
        with pytest.raises(ConfigError, match=f"cannot write {folder}: it is a folder; give a file name such as"):
            attempt()
    with pytest.raises(ConfigError, match="folder .*nowhere does not exist"):
        check_report_target(tmp_path / "nowhere" / "page.html")
    assert check_report_target(folder / "page.html") == folder / "page.html"
    assert check_report_target("-") == Path("-")
    assert list(folder.iterdir()) == []


@needs_chromium
def test_bench_and_check_write_the_same_style_of_page(run_dir, env, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    model = run_dir / "original.onnx"
    bench_page, check_page = tmp_path / "bench.html", tmp_path / "check.html"
    runner = CliRunner()  # in this process: the agent is still a real subprocess, without a second Python start-up
    done = runner.invoke(app, ["bench", str(model), "--runs", "60", "--min-seconds", "0.05", "--html", str(bench_page)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(
        app,
        [
            "check",
            str(model),
            "--device",
            "local",
            "--runs",
            "60",
            "--min-seconds",
            "0.05",
            "--budget",
            "size<=1MB",
            "--html",
            str(check_page),
        ],
    )
    assert done.exit_code == 0, done.output
    with Browser() as browser:
        for path, title in ((bench_page, "edgecompress bench"), (check_page, "edgecompress check")):
            browser.load(path.resolve().as_uri())
            assert browser.evaluate("document.title").startswith(title)
            figures = browser.evaluate(FIGURES_JS)
            assert len(figures) == 2 and all(f["width"] > 200 and f["drawn"] > 20 for f in figures), figures
        assert "size&lt;=1MB" in check_page.read_text() and "✓ pass" in check_page.read_text()
        assert browser.console_errors() == []


def test_dashboard_serves_the_runs_studies(run_dir, env):
    pytest.importorskip("optuna_dashboard")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecompress", "dashboard", str(run_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the address is printed once the server is bound
            lines.append(line)
            if line.startswith("http://127.0.0.1:"):
                break
        assert f"sqlite:///{(run_dir / 'study.sqlite3').resolve()}" in "".join(lines)
        url = lines[-1].strip()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        assert b"Optuna Dashboard" in opener.open(url, timeout=30).read()
        studies = json.loads(opener.open(url.replace("/dashboard", "/api/studies"), timeout=30).read())
        assert [s["study_name"] for s in studies["study_summaries"]] == ["tune-digits/round-0"]
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_dashboard_without_the_package_says_how_to_install_it(run_dir, env):
    # The package made unimportable in this one process, as on a machine without the extra.
    code = (
        "import sys; sys.modules['optuna_dashboard'] = None; sys.argv = ['edgecompress', 'dashboard', "
        f"{str(run_dir)!r}]; from edgecompress.cli import main; main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "optuna-dashboard is not installed; install it with: pip install 'edgecompress[dashboard]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # one clear line (wrapped at most once), no traceback


def test_the_tail_figure_draws_the_pwcet_fit_when_there_is_one():
    rng = np.random.default_rng(7)
    sample = (1e6 * (1.0 + rng.exponential(0.05, 5000))).astype(int)  # i.i.d., an exponential tail
    tail = pwcet(sample)
    assert not tail.fallback
    svg = plots.tail_plot([("model", sample, tail, plots.FINAL)])
    assert f"pWCET fit ({tail.method})" in svg and "observed max" not in svg


def test_energy_is_drawn_where_it_was_measured(run_dir):
    results = copy.deepcopy(load_results(run_dir))
    assert "Energy was not measured" in _energy_section(results)  # the local device has no power source
    energy = {
        "source": "rapl",
        "energy_mj": 2.5,
        "active_energy_mj": 1.0,
        "mean_power_w": 6.0,
        "idle_power_w": 3.6,
        "partial": True,
    }
    results["base"]["observation"]["energy"] = energy
    for i, trial in enumerate(results["trials"]):
        if trial.get("values"):
            trial["values"]["energy"] = 1.0 + i
    section = _energy_section(results)
    assert "<svg" in section and "rapl" in section and "2.5 mJ" in section


def test_recorded_channels_are_what_the_pruner_leaves():
    from edgecompress.compress import CompressionPlan, apply_plan, search_space
    from edgecompress.report import group_channels
    from edgecompress.workload import load_workload

    workload = load_workload(example="digits", val_limit=50)
    model = workload.build_model().eval()
    space = search_space(model, workload.input_shape, workload.ignore)
    plan = CompressionPlan(ratios={space.groups[0].name: 0.65, space.groups[1].name: 0.4}, round_to=4)
    recorded = group_channels(space, plan)
    pruned = search_space(apply_plan(model, plan, workload, space), workload.input_shape, workload.ignore)
    assert {g["group"]: g["after"] for g in recorded} == {g.name: g.channels for g in pruned.groups}
    assert any(g["after"] < g["before"] for g in recorded)


def test_the_plan_table_shows_the_channels_actually_removed():
    """A ratio that rounds to no channel (0.45 of 16 with round_to 8) shows 16 -> 16, not a ratio of 0.45."""
    from edgecompress.report._html import _plan_section

    groups = [
        {"group": "conv1", "before": 16, "ratio": 0.45, "after": 16},
        {"group": "conv2", "before": 32, "ratio": 0.5, "after": 16},
    ]
    page = _plan_section({"rounds": [{"round": 0, "groups": groups, "next_base": {"plan": {"quant": "fp32"}}}]})
    assert "16 -&gt; 16" in page and "32 -&gt; 16" in page and "0.45" not in page
    rows = re.findall(r"<tr>(.*?)</tr>", page)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    assert [c[:4] for c in cells] == [["conv1", "16", "16 -&gt; 16", "0"], ["conv2", "32", "32 -&gt; 16", "16"]]


def test_bytes_and_memory_are_printed_in_their_units():
    from edgecompress.budgets import format_value
    from edgecompress.report._html import _drift_section, _environment_rows

    svg_text = plots.accuracy_vs_metric(
        [{"round": 0, "values": {"size": 59060.0}, "accuracy": 0.9, "feasible": True}],
        "size",
        "bytes",
        [70000.0],
        59060.0,
        (80000.0, 0.95),
        None,
        [],
    )
    assert "e+04" not in svg_text and "59.1 kB" in svg_text and "70.0 kB" in svg_text
    drift = _drift_section({"drift": [{"round": 1, "measurements": [{"values": {"size": 59060.0}, "drift": {}}]}]})
    assert "e+04" not in drift and "59.1 kB" in drift
    rows = dict(_environment_rows({"memory": {"total_bytes": 25275990016}}))
    assert rows["memory"] == "23.5 GiB"
    assert format_value(2.5e9, "bytes") == "2.50 GB"


def test_a_budget_never_measured_shows_no_constraint_in_the_trials_table():
    from edgecompress.report._html import _constraint

    skipped = {"constraints": {"latency.p50": 0.0, "size": 19100.0}, "values": {"size": 59100.0}}
    assert 'data-v=""' in _constraint(skipped, "latency.p50", "ms", skipped["values"])
    assert 'data-v="19100.0"' in _constraint(skipped, "size", "bytes", skipped["values"])
    paired = {
        "constraints": {"latency.p50": -0.1},
        "values": {"latency.p50": 0.03},
        "decisions": {"latency.p50": {"paired": True}},
    }
    assert "ms" not in _constraint(paired, "latency.p50", "ms", paired["values"])  # a ratio, not milliseconds


def test_the_devices_and_hosts_section_counts_each_hosts_trials_and_names_left_out_members():
    from edgecompress.report._html import _scale_section

    trials = [
        {"state": "COMPLETE", "member": "pi-a", "worker": "tune@host-1"},
        {"state": "COMPLETE", "member": "pi-a", "worker": "worker@host-2"},  # the worker's own pi-a
        {"state": "COMPLETE", "member": "pi-a", "worker": "tune@host-1", "duplicate_of": 0},
        {"state": "FAIL", "member": "pi-b", "worker": "tune@host-1"},
    ]
    scale = {
        "members": {
            "pi-a": {"leases": 3, "leases_lost": 1, "busy_fraction": 0.5, "busy_fraction_in_trials": 0.8},
            "pi-b": {"leases": 1, "leases_lost": 0, "busy_fraction": 0.1, "dropped": True},
            "pi-c": {"left_out": "its original measured latency.p50 3.0, 43% off the pool's median 2.1"},
        },
        "in_flight_max": 3,
        "host_busy_fraction": 0.25,
    }
    results = {"trials": trials, "device": {"scale": scale, "overlap": {"on": True, "why": "remote devices"}}}
    text = re.sub(r"<[^>]+>", " ", str(_scale_section(results)))
    assert re.search(r"pi-a\s+in the pool\s+1\s+3\s+1\s+50\.0\s+80\.0", text), text
    assert re.search(r"pi-b\s+dropped", text)
    assert "pi-c" in text and "left out" in text and "43% off" in text
    assert re.search(r"tune@host-1\s+3", text) and re.search(r"worker@host-2\s+1", text)
    assert "on: remote devices" in text


def test_the_summary_shows_a_relative_budget_as_it_was_judged_on_the_paired_ratio():
    # Two measurements minutes apart are not the verdict: a README run read 0.055 ms against its start-resolved
    # 0.050 ms and was met at 0.918x of the original in alternating windows. The page shows the ratio it judged.
    decision = {"key": "latency.p50", "threshold": 1.1, "outcome": "met", "value": 0.9176, "paired": True}
    results = {
        "base": {"candidate": {"accuracy": 0.99, "size_bytes": 59000}, "values": {"latency.p50": 0.045}},
        "final": {
            "met": True,
            "accuracy": 0.95,
            "size_bytes": 18000,
            "values": {"latency.p50": 0.055},
            "verdict": {"decisions": {"latency.p50": decision}},
        },
    }
    page = str(_summary(results, [("latency.p50", "ms", 0.0495)]))
    assert "0.918x paired" in page and "1.1x (0.050 ms at the start)" in page
    assert "1.22 x" not in page  # 0.055 / 0.045: the unpaired ratio the page showed before
    unpaired = str(_summary(results | {"final": results["final"] | {"verdict": {}}}, [("latency.p50", "ms", 0.0495)]))
    assert "1.22 x" in unpaired and "paired" not in unpaired
