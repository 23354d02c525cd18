"""The kinds of workspace and their traits, in one table.

Everything that differs between a Unix account, a sandbox and a virtual machine outside the
manager's plug-ins (admission, the policy, placement, the CLI, the configuration) reads its
answer here; nothing else names a kind. The wire's enum (vws.v1 WorkspaceSpec.Kind) is turned
into model.Kind by vws.common.converters alone."""
from __future__ import annotations

import dataclasses

from .model import Kind


@dataclasses.dataclass(frozen=True)
class Traits:
    kind: Kind
    name: str                 # on the command line, in the policy file and in messages
    host_noun: str            # what realises one on its host: an account, a (libvirt) domain
    plug_in: str              # the manager's backend package that realises it (vws.manager.backends.<plug_in>)
    boots_image: bool         # needs spec.software.image (a catalogue image) and accepts one
    own_network: bool         # has an interface of its own, so its bandwidth can be shaped
    accepts_setup: bool       # takes a set-up script and staged files at create
    pooled_name: str = ""     # the policy's name when a site's account pool leases it ("pool")
    least_memory_bytes: int = 0  # what one needs to run a program, above the site's floors (a guest's kernel)
    least_cpu_millis: int = 0    # (a guest must boot before the manager stops waiting for its agent)
    command_bytes: int = 0    # the most one program's start may carry through a guest agent (JSON); 0: no agent
    summary: str = ""         # one line for help texts

    @property
    def policy_names(self) -> tuple[str, ...]:
        """The names a policy rule's `kinds` may give for it."""
        return (self.name, self.pooled_name) if self.pooled_name else (self.name,)

    def policy_name(self, pooled: bool) -> str:
        """The name the policy decides on: `pooled`, leased from an account pool."""
        return self.pooled_name if pooled and self.pooled_name else self.name


TABLE: dict[Kind, Traits] = {t.kind: t for t in (
    Traits(Kind.UNIX_ACCOUNT, "account", "account", "account", boots_image=False, own_network=False,
           accepts_setup=True, pooled_name="pool", summary="a Unix account on the host, in a cgroup of its own"),
    Traits(Kind.SANDBOX, "sandbox", "account", "sandbox", boots_image=False, own_network=True,
           accepts_setup=True, summary="an account's processes in namespaces of their own (bubblewrap)"),
    Traits(Kind.VIRTUAL_MACHINE, "vm", "domain", "vm", boots_image=True, own_network=True,
           accepts_setup=False, least_memory_bytes=128 * 1024**2, least_cpu_millis=1000,
           # qemu-ga of QEMU 7.2 answered a command of 218,082 bytes, not one of 219,946: a margin below
           command_bytes=192 * 1024, summary="a virtual machine booting a catalogue image (libvirt)"),
)}

# The simplest isolation, for a request that names no kind.
DEFAULT = Kind.UNIX_ACCOUNT
# Every name a policy rule's `kinds` may list.
POLICY_NAMES: tuple[str, ...] = tuple(n for t in TABLE.values() for n in t.policy_names)
_BY_NAME = {t.name: t for t in TABLE.values()}


def of(kind: Kind) -> Traits:
    return TABLE[kind]


def names() -> tuple[str, ...]:
    """The kinds' names, as the command line takes them."""
    return tuple(_BY_NAME)


def by_name(name: str) -> Traits:
    """KeyError for a name no kind has."""
    return _BY_NAME[name]


def default(image: bool = False) -> Kind:
    """The kind a request means when it names none: `image`, it names an image to boot."""
    if not image:
        return DEFAULT
    return next(t.kind for t in TABLE.values() if t.boots_image)


def name_of(kind: Kind | None) -> str:
    return TABLE[kind].name if kind in TABLE else "unspecified"
