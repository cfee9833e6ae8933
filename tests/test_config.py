"""User configuration: device profiles, budgets, and edgecompress.toml merged with the command line's flags."""

from __future__ import annotations

import pytest

from edgecompress.budgets import parse_budget
from edgecompress.config import load_tune_config, resolve_device
from edgecompress.errors import ConfigError
from edgecompress.gate import load_check_config

LATIN_1 = 'name = "pi"\ndescription = "Raspberry Pi im Büro"\n'.encode("latin-1")


def test_a_budget_flag_replaces_the_same_metric_and_keeps_the_configured_others(tmp_path):
    path = tmp_path / "edgecompress.toml"
    # Unquoted dotted keys are nested tables in TOML; tune reads them as check does.
    path.write_text('[budgets]\nsize = "1kB"\nlatency.p50 = "2x"\nlatency.p99 = "20ms"\n')
    config = load_tune_config(path, {"budgets": ["latency.p50<=3x"]})
    assert sorted(config.budgets) == ["latency.p50<=3x", "latency.p99<=20ms", "size<=1kB"]
    assert sorted(load_tune_config(path, {"budgets": []}).budgets) == [
        "latency.p50<=2x",
        "latency.p99<=20ms",
        "size<=1kB",
    ]
    assert load_tune_config(None, {"budgets": ["size<=2MB"]}).budgets == ["size<=2MB"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latency.p99<=1e400ms", "the limit must be a finite number"),
        ("size<=1e305GB", "the limit must be a finite number"),
        ("latency.p50<=1e400x", "the limit must be a finite number"),
        ("latency.pwcet@1e400<=20ms", "the exceedance probability must be a finite number"),
    ],
)
def test_non_finite_budgets_are_refused(text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_budget(text)
    assert len(str(caught.value).splitlines()) == 1 and text in str(caught.value)


def test_a_profile_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "pi.toml"
    path.write_bytes(LATIN_1)
    with pytest.raises(ConfigError, match="is not UTF-8") as caught:
        resolve_device(str(path))
    assert str(path) in str(caught.value) and "save it as UTF-8" in str(caught.value)
    # One such file among the user's profiles names itself, whichever device was asked for.
    with pytest.raises(ConfigError, match=f"{path}: .*is not UTF-8"):
        resolve_device("local", user_dir=tmp_path)
    config = tmp_path / "edgecompress.toml"
    config.write_bytes(b"[budgets]\n# \xe9\nsize = '1MB'\n")
    for load in (lambda: load_tune_config(config, {}), lambda: load_check_config(config)):
        with pytest.raises(ConfigError, match=f"{config}: .*is not UTF-8"):
            load()
