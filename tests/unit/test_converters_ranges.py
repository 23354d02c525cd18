"""Times and durations out of their range answer INVALID_ARGUMENT naming the field and the range,
never the ValueError/OverflowError of datetime or a C int (issue 17, item 1)."""
from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from vws.common import converters, errors
from vws.v1 import access_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace
Spec = workspace_pb2.WorkspaceSpec
LARGEST_DURATION = 315_576_000_000  # google.protobuf.Duration's own bound, 10,000 years


def refused(call) -> dict[str, str]:
    with pytest.raises(errors.InvalidArgument) as e:
        call()
    return dict(e.value.violations)


@pytest.mark.parametrize("seconds,nanos", [(0, 1_000_000_000), (0, -1), (253402300800, 0), (-62135596801, 0),
                                           (2 ** 63 - 1, 0), (-2 ** 63, 0)])
def test_a_timestamp_out_of_range_names_its_field_and_the_range(seconds, nanos):
    req = repository_pb2.UpdateTerminationTimeRequest(
        termination_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    found = refused(lambda: converters.ts_from_pb(req, "termination_time"))
    assert list(found) == ["termination_time"]
    assert "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z" in found["termination_time"]


def test_a_create_time_in_year_10000_names_workspace_create_time():
    ws = W(create_time=timestamp_pb2.Timestamp(seconds=253402300800))
    assert list(refused(lambda: converters.workspace_from_pb(ws))) == ["workspace.create_time"]
    assert list(refused(lambda: converters.workspace_from_pb(ws, "arriving"))) == ["arriving.create_time"]


@pytest.mark.parametrize("seconds,nanos", [(-2 ** 63, 0), (2 ** 63 - 1, 0), (LARGEST_DURATION, 999_999_999),
                                           (converters.MAX_DURATION_SECONDS + 1, 0), (1, -1), (-1, 1),
                                           (0, 1_000_000_000)])
def test_a_lifetime_out_of_range_names_workspace_spec_lifetime(seconds, nanos):
    ws = W(spec=Spec(lifetime=duration_pb2.Duration(seconds=seconds, nanos=nanos)))
    found = refused(lambda: converters.workspace_from_pb(ws))
    assert list(found) == ["workspace.spec.lifetime"]
    assert f"{converters.MAX_DURATION_SECONDS}s" in found["workspace.spec.lifetime"]


@pytest.mark.parametrize("seconds", [2 ** 63 - 1, LARGEST_DURATION])
def test_an_extend_by_too_large_names_extend_by(seconds):
    req = repository_pb2.UpdateTerminationTimeRequest(extend_by=duration_pb2.Duration(seconds=seconds))
    assert list(refused(lambda: converters.duration_from_pb(req, "extend_by"))) == ["extend_by"]


def test_the_largest_accepted_duration_still_adds_to_a_time():
    req = repository_pb2.UpdateTerminationTimeRequest(
        extend_by=duration_pb2.Duration(seconds=converters.MAX_DURATION_SECONDS, nanos=999_999_999))
    assert dt.datetime.now(dt.timezone.utc) + converters.duration_from_pb(req, "extend_by") < dt.datetime.max.replace(
        tzinfo=dt.timezone.utc)
    req.extend_by.seconds, req.extend_by.nanos = -converters.MAX_DURATION_SECONDS, -999_999_999
    assert converters.duration_from_pb(req, "extend_by") < dt.timedelta(0)


def test_times_within_range_convert_as_before():
    req = repository_pb2.UpdateTerminationTimeRequest(
        termination_time=timestamp_pb2.Timestamp(seconds=253402300799, nanos=999_999_999))
    assert converters.ts_from_pb(req, "termination_time").year == 9999
    req.termination_time.seconds, req.termination_time.nanos = -62135596800, 0
    assert converters.ts_from_pb(req, "termination_time") == dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)
    assert converters.ts_from_pb(repository_pb2.UpdateTerminationTimeRequest(), "termination_time") is None


def test_nested_times_name_their_path():
    usage = workspace_pb2.WorkspaceUsage(start_time=timestamp_pb2.Timestamp(nanos=1_000_000_000))
    assert list(refused(lambda: converters.usage_from_pb(usage))) == ["usage.start_time"]
    assert list(refused(lambda: converters.usage_from_pb(usage, "usage[2]"))) == ["usage[2].start_time"]
    progress = workspace_pb2.Progress(update_time=timestamp_pb2.Timestamp(seconds=2 ** 62))
    assert list(refused(lambda: converters.progress_from_pb(progress))) == ["progress.update_time"]
    manager = workspace_pb2.Manager(heartbeat_interval=duration_pb2.Duration(seconds=-2 ** 63))
    assert list(refused(lambda: converters.manager_from_pb(manager))) == ["manager.heartbeat_interval"]
    caller = access_pb2.Caller(credential_kind=1, expire_time=timestamp_pb2.Timestamp(seconds=2 ** 62))
    assert list(refused(lambda: converters.caller_from_pb(caller))) == ["caller.expire_time"]
