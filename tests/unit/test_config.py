"""Settings come from defaults < TOML < VWS_* environment < flags; every bad value names its setting."""
from __future__ import annotations

import datetime as dt

import pytest

from vws.common import config, errors, units


def write(tmp_path, text):
    path = tmp_path / "vws.toml"
    path.write_text(text)
    return str(path)


def test_layers_in_order(tmp_path):
    path = write(tmp_path, """
data_dir = "/srv/vws"
repository = "repo:1"
[manager]
pool_size = 4
backend = "account-pool"
quarantine = "2m"
""")
    s = config.load("manager", {"config": path}, environ={})
    assert (s.pool_size, s.backend, s.quarantine, s.repository) == (4, "account-pool", dt.timedelta(minutes=2), "repo:1")
    assert str(s.data_dir) == "/srv/vws"
    s = config.load("manager", {"config": path}, environ={"VWS_MANAGER_POOL_SIZE": "16", "VWS_REPOSITORY": "r:2"})
    assert (s.pool_size, s.repository) == (16, "r:2")
    s = config.load("manager", {"config": path, "pool_size": "32"}, environ={"VWS_MANAGER_POOL_SIZE": "16"})
    assert s.pool_size == 32


def test_data_dir_toml_is_found_untold(tmp_path):
    (tmp_path / "vws.toml").write_text("[factory]\nmax_lifetime = \"3d\"\n")
    s = config.load("factory", {"data_dir": str(tmp_path)}, environ={})
    assert s.max_lifetime == dt.timedelta(days=3)


@pytest.mark.parametrize("text,field", [
    ("[manager]\npool_size = \"many\"\n", "pool_size"),
    ("[manager]\nheartbeat_interval = \"soon\"\n", "heartbeat_interval"),
    ("[manager]\nnot_a_setting = 1\n", "config"),
    ("[manager\n", "config"),
])
def test_bad_values_name_the_setting(tmp_path, text, field):
    with pytest.raises(errors.InvalidArgument) as e:
        config.load("manager", {"config": write(tmp_path, text)}, environ={})
    assert e.value.violations[0][0] == field


def test_missing_config_file_says_so(tmp_path):
    with pytest.raises(errors.InvalidArgument, match="does not exist"):
        config.load("repository", {"config": str(tmp_path / "nope.toml")}, environ={})


@pytest.mark.parametrize("text,expected", [("512M", 512 * 2 ** 20), ("2G", 2 * 2 ** 30), ("1.5GiB", 3 * 2 ** 29),
                                           ("4096", 4096)])
def test_sizes(text, expected):
    assert units.parse_size(text, "memory") == expected


def test_units_refuse_nonsense():
    for parse, text in ((units.parse_size, "lots"), (units.parse_duration, "1 fortnight"),
                        (units.parse_cpu, "fast"), (units.parse_bandwidth, "quick")):
        with pytest.raises(errors.InvalidArgument):
            parse(text, "x")
    assert units.parse_duration("1h30m", "x") == dt.timedelta(minutes=90)
    assert units.parse_cpu("500m", "x") == 500 and units.parse_cpu("1.5", "x") == 1500
    assert units.parse_bandwidth("100M", "x") == 100_000_000


def test_run_files(tmp_path):
    config.write_run_file(tmp_path, "factory", {"address": "127.0.0.1:1"})
    assert config.read_run_file(tmp_path, "factory")["address"] == "127.0.0.1:1"
    config.remove_run_file(tmp_path, "factory")
    assert config.read_run_file(tmp_path, "factory") is None
