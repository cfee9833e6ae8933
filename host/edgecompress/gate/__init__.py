"""The hardware regression gate behind ``edgecompress check``: budgets and a regression test against a baseline."""

from edgecompress.gate._config import (
    CheckConfig,
    RegressionSettings,
    budget_texts,
    load_check_config,
    merge_budgets,
    parse_check_config,
    parse_tolerance,
    read_budgets,
    unit_spelling,
)
from edgecompress.gate._result import SCHEMA, Baseline, BudgetOutcome, CheckResult, RegressionOutcome
from edgecompress.gate._run import (
    DeviceRun,
    batch_input_shapes,
    budget_targets,
    confirm,
    confirm_side_by_side,
    evaluate,
    load_baseline,
    measure_model,
    measure_side_by_side,
    run_check,
)

__all__ = [
    "SCHEMA",
    "Baseline",
    "BudgetOutcome",
    "CheckConfig",
    "CheckResult",
    "DeviceRun",
    "RegressionOutcome",
    "RegressionSettings",
    "batch_input_shapes",
    "budget_targets",
    "budget_texts",
    "confirm",
    "confirm_side_by_side",
    "evaluate",
    "load_baseline",
    "load_check_config",
    "measure_model",
    "measure_side_by_side",
    "merge_budgets",
    "parse_check_config",
    "parse_tolerance",
    "read_budgets",
    "run_check",
    "unit_spelling",
]
