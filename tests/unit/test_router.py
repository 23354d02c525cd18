"""The kind router sends each call to the plug-in of the workspace's kind."""
import pytest

from tests.unit.test_manager_service import FakeBackend
from vws.common import errors, model
from vws.manager.backends.base import HostHandle
from vws.manager.backends.router import KindRouter


class FakeSandbox(FakeBackend):
    name = "fake-sandbox"
    kinds = frozenset({model.Kind.SANDBOX})


def test_routes_by_kind_and_merges_inventory():
    accounts, sandboxes = FakeBackend(), FakeSandbox()
    router = KindRouter([accounts, sandboxes])
    assert router.kinds == {model.Kind.UNIX_ACCOUNT, model.Kind.SANDBOX}
    a = router.realise("waaaaaaaaaaa", model.WorkspaceSpec(kind=model.Kind.UNIX_ACCOUNT))
    s = router.realise("wbbbbbbbbbbb", model.WorkspaceSpec(kind=model.Kind.SANDBOX))
    assert (a.kind, s.kind) == (model.Kind.UNIX_ACCOUNT, model.Kind.SANDBOX)
    router.pause(s)
    assert sandboxes.log == [("pause", s.host_identity)] and accounts.log == []
    assert set(router.inventory()) == {a.host_identity, s.host_identity}
    router.reclaim(s.host_identity)
    assert s.host_identity not in sandboxes.accounts and a.host_identity in accounts.accounts
    with pytest.raises(errors.Unimplemented, match="vm"):
        router.realise("wccccccccccc", model.WorkspaceSpec(kind=model.Kind.VIRTUAL_MACHINE))
    with pytest.raises(errors.Unimplemented):
        router.start(HostHandle("w", "x", model.Kind.VIRTUAL_MACHINE))
