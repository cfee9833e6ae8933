"""benchmarks/speedup_at_accuracy.py's accuracy-drop test: a model exactly at the allowed drop counts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from speedup_at_accuracy import drop_points  # noqa: E402


@pytest.mark.parametrize(
    ("original", "accuracy", "points"),
    [(0.909, 0.899, 1.0), (0.909, 0.901, 0.8), (0.909, 0.898, 1.1), (0.5, 0.6, -10.0)],
)
def test_drop_points_are_exact_to_the_validation_sets_resolution(original, accuracy, points):
    assert drop_points(original, accuracy) == points


def test_a_model_exactly_one_point_under_the_original_is_within_one_point():
    assert drop_points(0.909, 0.899) <= 1.0
