"""Backend selection and account-name validation (no root needed)."""
from __future__ import annotations

import pytest

from vws.common import errors
from vws.manager.backends.account import make_backend
from vws.manager.backends.account.users import validate_prefix
from vws.manager.backends.base import BackendSettings, SetupFailed


def test_unknown_backend_names_the_field_and_the_choices(tmp_path):
    with pytest.raises(errors.InvalidArgument) as e:
        make_backend(BackendSettings(kind="docker", manager_id="m1", state_dir=tmp_path))
    assert e.value.violations[0][0] == "backend"
    assert "dynamic-accounts" in e.value.message and "account-pool" in e.value.message


@pytest.mark.parametrize("prefix", ["vws-", "a", "_x", "vws_abc-", "x" * 20])
def test_good_prefixes(prefix):
    validate_prefix(prefix, "account_prefix", 12)


@pytest.mark.parametrize("prefix", ["", "Vws-", "1ab", "vws:", "v ws", "x" * 21, "vws/"])
def test_bad_prefixes(prefix):
    with pytest.raises(errors.InvalidArgument) as e:
        validate_prefix(prefix, "account_prefix", 12)
    assert e.value.violations[0][0] == "account_prefix"


def test_bad_prefix_fails_at_construction(tmp_path):
    with pytest.raises(errors.InvalidArgument) as e:
        make_backend(BackendSettings(kind="dynamic-accounts", manager_id="m1", state_dir=tmp_path,
                                     account_prefix="Bad"))
    assert e.value.violations[0][0] == "account_prefix"


def test_settings_coerce_paths(tmp_path):
    s = BackendSettings(kind="dynamic-accounts", manager_id="m1", state_dir=str(tmp_path), cgroup_root="/sys/fs/cgroup")
    assert s.cgroup_root.name == "cgroup" and s.state_dir == tmp_path


def test_setup_failed_names_the_field_and_the_status():
    e = SetupFailed(3, "line1\nboom")
    assert e.violations[0][0] == "workspace.spec.software.setup_script"
    assert "status 3" in e.message and "boom" in e.message
    assert "signal 9" in SetupFailed(-9, "").message
