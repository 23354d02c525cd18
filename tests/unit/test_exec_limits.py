"""Exec's argv, environment and working directory are checked before the kernel sees them: a NUL
byte or more than execve takes is INVALID_ARGUMENT naming the field and the limit (issue 17, item 3)."""
from __future__ import annotations

import os

import pytest

from vws.common import errors
from vws.manager import exec_limits
from vws.manager.exec_limits import MAX_STRING_BYTES, MAX_TOTAL_BYTES


def refused(argv, environment=None, working_directory="", inherited=None) -> dict[str, str]:
    with pytest.raises(errors.InvalidArgument) as e:
        exec_limits.check(argv, environment or {}, working_directory, inherited)
    return dict(e.value.violations)


def test_the_limits_are_well_under_the_kernels():
    assert MAX_TOTAL_BYTES <= os.sysconf("SC_ARG_MAX") // 2
    assert MAX_STRING_BYTES < 128 * 1024


def test_a_nul_byte_names_its_argument_or_variable():
    assert "NUL" in refused(["/bin/echo", "a\0b"])["argv[1]"]
    assert "NUL" in refused(["/bin/echo"], {"A": "x\0y"})["environment[A]"]
    assert "not a variable name" in refused(["/bin/echo"], {"A\0B": "x"})["environment[A\0B]"]
    assert "NUL" in refused(["/bin/echo"], working_directory="d\0")["working_directory"]


def test_an_argument_or_variable_over_the_kernels_string_limit():
    found = refused(["/bin/echo", "x", "y" * (MAX_STRING_BYTES + 1)])
    assert list(found) == ["argv[2]"] and str(MAX_STRING_BYTES) in found["argv[2]"]
    assert str(MAX_STRING_BYTES) in refused(["/bin/echo"], {"BIG": "y" * MAX_STRING_BYTES})["environment[BIG]"]
    exec_limits.check(["/bin/echo", "y" * MAX_STRING_BYTES], {}, "")


def test_200_kb_of_arguments_passes_each_string_but_not_the_total():
    argv = ["/bin/echo"] + ["y" * 100_000] * (MAX_TOTAL_BYTES // 100_000 + 1)
    found = refused(argv)
    assert list(found) == ["argv"] and f"at most {MAX_TOTAL_BYTES}" in found["argv"]
    exec_limits.check(["/bin/echo"] + ["y" * 1000] * 200, {}, "")  # 200 KB in small pieces is fine


def test_the_total_counts_the_workspaces_own_environment():
    inherited = {f"V{i}": "y" * 100_000 for i in range(MAX_TOTAL_BYTES // 100_000 + 1)}
    found = refused(["/bin/echo"], {"MINE": "z" * 10}, inherited=inherited)
    assert "the workspace's own included" in found["environment"]
    # a variable the request sets replaces the workspace's: counted once
    exec_limits.check(["/bin/echo"], {k: "" for k in inherited}, "", inherited)


def test_every_violation_is_named_with_a_bounded_message():
    key = "K" * 20_000 + "="  # not a name, and far too long to quote
    found = refused([], {key: "v", "A": "\0"}, "w\0")
    assert set(found) == {"argv", f"environment[{'K' * 40}...]", "environment[A]", "working_directory"}
    many = refused(["/bin/echo"] + ["\0"] * 100)
    assert len(many) == exec_limits.MAX_VIOLATIONS
    assert len(str(errors.InvalidArgument(list(many.items())))) < 1024


def test_a_backends_carrier_may_take_less_than_the_kernel():
    exec_limits.check_encoded(["/bin/echo", "x"], {"A": "b"}, 1000, 1000, "the guest agent")
    with pytest.raises(errors.InvalidArgument) as e:
        exec_limits.check_encoded(["/bin/echo"], {"A": "b" * 900}, 1001, 1000, "the guest agent")
    assert e.value.violations[0][0] == "environment"
    assert "1001 bytes for the guest agent, which takes at most 1000" in e.value.message
