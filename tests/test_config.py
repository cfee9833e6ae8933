"""User configuration: device profiles, budgets, and edgecompress.toml merged with the command line's flags."""

from __future__ import annotations

import json
import os

import pytest
from clirun import edgecompress

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
    # Among the user's profiles it names itself when it is the device asked for, and stops no other.
    with pytest.raises(ConfigError, match=f"{path}: .*is not UTF-8"):
        resolve_device("pi", user_dir=tmp_path)
    assert resolve_device("local", user_dir=tmp_path).name == "local"
    config = tmp_path / "edgecompress.toml"
    config.write_bytes(b"[budgets]\n# \xe9\nsize = '1MB'\n")
    for load in (lambda: load_tune_config(config, {}), lambda: load_check_config(config)):
        with pytest.raises(ConfigError, match=f"{config}: .*is not UTF-8"):
            load()


BROKEN = {
    "bad-toml.toml": "name = 'x\n",  # not TOML
    "bad-field.toml": 'name = "lab-pi"\ntransport = "ssh"\n[ssh]\nhost = "pi"\nport = 0\n',  # named inside
    "local.toml": 'name = "local"\n[runtime]\nthreads = -1\n',  # a broken override of a built-in
}


def test_a_broken_user_profile_fails_only_when_it_is_the_one_asked_for(tmp_path):
    for name, text in BROKEN.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "good.toml").write_text('description = "works"\n')
    assert resolve_device("good", user_dir=tmp_path).description == "works"
    assert resolve_device("raspberry-pi-5", user_dir=tmp_path).name == "raspberry-pi-5"
    for spec, file in (("bad-toml", "bad-toml.toml"), ("lab-pi", "bad-field.toml"), ("local", "local.toml")):
        with pytest.raises(ConfigError, match=str(tmp_path / file)):
            resolve_device(spec, user_dir=tmp_path)


def test_devices_lists_a_broken_profile_as_broken_and_still_runs_the_others(tmp_path):
    home = tmp_path / "home"
    folder = home / ".config" / "edgecompress" / "profiles"
    folder.mkdir(parents=True)
    (folder / "bad-toml.toml").write_text(BROKEN["bad-toml.toml"])
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="300")
    listing = edgecompress("devices", env=env)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "bad-toml" in line)
    assert "broken" in row and "not valid TOML" in row, listing.stdout
    assert "local" in listing.stdout
    as_json = json.loads(edgecompress("devices", "--json", env=env).stdout)
    assert "not valid TOML" in as_json["bad-toml"]["broken"] and as_json["local"]["transport"] == "local"
    info = edgecompress("devices", "info", "local", "--json", env=env)
    assert info.returncode == 0, info.stderr
    asked = edgecompress("devices", "info", "bad-toml", env=env)
    assert asked.returncode == 2 and str(folder / "bad-toml.toml") in asked.stderr, asked.stderr
