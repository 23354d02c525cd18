"""Bad input through a real stack answers INVALID_ARGUMENT naming the field, never INTERNAL (issue 17)."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from tests.integration.test_workspaces import create, get, repo, violations
from vws.v1 import repository_pb2

LARGEST_DURATION = 315_576_000_000  # google.protobuf.Duration's own bound, 10,000 years


def test_times_and_durations_out_of_range_are_invalid_arguments(stack):
    ws = create(stack, lifetime=duration_pb2.Duration(seconds=3600)).workspace
    for change in (dict(extend_by=duration_pb2.Duration(seconds=2 ** 63 - 1)),
                   dict(extend_by=duration_pb2.Duration(seconds=LARGEST_DURATION, nanos=999_999_999)),
                   dict(termination_time=timestamp_pb2.Timestamp(seconds=1, nanos=1_000_000_000))):
        with pytest.raises(grpc.RpcError) as e:
            repo(stack).UpdateTerminationTime(repository_pb2.UpdateTerminationTimeRequest(name=ws.name, **change),
                                              timeout=10)
        field = next(iter(change))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert "out of range" in violations(e.value)[field]
    assert get(stack, ws.name).termination_time == ws.termination_time
    with pytest.raises(grpc.RpcError) as e:
        create(stack, lifetime=duration_pb2.Duration(seconds=-2 ** 63))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "out of range" in violations(e.value)["workspace.spec.lifetime"]
    assert stack.accounts() == [ws.endpoint.host_identity]
