"""Hypothesis strategies for any request of the contract, built from its descriptors: every field
of the input message, recursively, either left unset or drawn from boundary and random values of
its type (ints at 0, -1 and the limits of their width; strings empty, huge, with NUL, non-ASCII,
path-like; Timestamps and Durations at and past their valid ranges; enums with unknown numbers;
repeated and map fields empty, small and large). `Hints` adds values that reach past the first
lookup (the live workspace's name, a real page token) for the fields that name something."""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from google.protobuf import descriptor, message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import strategies as st

# Path-like strings carry it, so that a file they made anywhere is found after the run.
MARK = f"vwsfz{secrets.token_hex(3)}"
HUGE = 20_000   # characters: past gRPC's 8 KB metadata limit when an error message echoes it
LARGE = 1000    # entries of a large repeated or map field
STRINGS = ["", " ", "a" * HUGE, "a\x00b", "\x00", "ünïcødé ☃ 𝄞 اختبار", f"../../{MARK}", f"/tmp/{MARK}",
           "..", ".", "/", "-rf", "%s%n%x", "\n\r\t", "'\"; --", "${HOME}$(id)", "a" * 64, "A" * 256, "x" * 4097]
BYTES = [b"", b"\x00", b"\xff\xfe\xfd", b"x" * 200_000, "ünï".encode()]
INT_RANGES = {
    F.TYPE_INT32: (-2 ** 31, 2 ** 31 - 1), F.TYPE_SINT32: (-2 ** 31, 2 ** 31 - 1), F.TYPE_SFIXED32: (-2 ** 31, 2 ** 31 - 1),
    F.TYPE_INT64: (-2 ** 63, 2 ** 63 - 1), F.TYPE_SINT64: (-2 ** 63, 2 ** 63 - 1), F.TYPE_SFIXED64: (-2 ** 63, 2 ** 63 - 1),
    F.TYPE_UINT32: (0, 2 ** 32 - 1), F.TYPE_FIXED32: (0, 2 ** 32 - 1),
    F.TYPE_UINT64: (0, 2 ** 64 - 1), F.TYPE_FIXED64: (0, 2 ** 64 - 1),
}
# google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TS_MIN, TS_MAX = -62_135_596_800, 253_402_300_799
# google.protobuf.Duration: +-10,000 years.
DUR_MAX = 315_576_000_000


class Hints:
    """Values worth trying for a field besides random ones, looked up when drawn (the live
    workspace changes during a run): by `Message.field`, then by `field`. An entry is a
    callable giving the values, or a strategy of its own; an entry named `Message` is a strategy
    for the whole message, drawn as often as the message built field by field."""

    def __init__(self, table: dict | None = None):
        self.table = dict(table or {})

    def lookup(self, message: descriptor.Descriptor, field: descriptor.FieldDescriptor):
        found = self.table.get(f"{message.name}.{field.name}")
        return found if found is not None else self.table.get(field.name)


def pick(values: Callable[[], list], otherwise: st.SearchStrategy) -> st.SearchStrategy:
    """One of `values()` as they are when drawn, or `otherwise` when there are none."""
    def one(i: int) -> st.SearchStrategy:
        found = values()
        return st.just(found[i % len(found)]) if found else otherwise
    return st.integers(0, 10_000).flatmap(one)


def ints(kind: int) -> st.SearchStrategy[int]:
    lo, hi = INT_RANGES[kind]
    edges = sorted({v for v in (0, 1, -1, lo, hi, lo + 1, hi - 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 62,
                                9, 255, 256, 4096, 65536, 10 ** 9) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -2), min(hi, 1 << 20)))


def texts() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(STRINGS), st.text(max_size=40))


def timestamps() -> st.SearchStrategy[tuple[int, int]]:
    now = int(time.time())
    seconds = st.one_of(
        st.sampled_from([0, -1, TS_MIN, TS_MIN - 1, TS_MAX, TS_MAX + 1, -2 ** 63, 2 ** 63 - 1, now, now + 3600,
                         now - 3600, now + 86_400 * 366 * 20]),
        st.integers(-2 ** 63, 2 ** 63 - 1), st.integers(TS_MIN, TS_MAX))
    nanos = st.one_of(st.sampled_from([0, 999_999_999, 10 ** 9, -1, -2 ** 31, 2 ** 31 - 1]), st.integers(0, 999_999_999))
    return st.tuples(seconds, nanos)


def durations() -> st.SearchStrategy[tuple[int, int]]:
    seconds = st.one_of(
        st.sampled_from([0, 1, -1, 60, 300, 3600, 86_400, DUR_MAX, DUR_MAX + 1, -DUR_MAX, -DUR_MAX - 1,
                         -2 ** 63, 2 ** 63 - 1]),
        st.integers(-2 ** 63, 2 ** 63 - 1), st.integers(-DUR_MAX, DUR_MAX))
    nanos = st.one_of(st.sampled_from([0, 999_999_999, -999_999_999, 10 ** 9, -1]), st.integers(-999_999_999, 999_999_999))
    return st.tuples(seconds, nanos)


def _large_default(field: descriptor.FieldDescriptor):
    """One element of a large repeated field: small, so that LARGE of them stay under 4 MB."""
    if field.type == F.TYPE_MESSAGE:
        return message_factory.GetMessageClass(field.message_type)()
    if field.type == F.TYPE_STRING:
        return "x" * 200
    if field.type == F.TYPE_BYTES:
        return b"x" * 200
    if field.type == F.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type == F.TYPE_BOOL:
        return True
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return 1.0
    return 1


def single(owner: descriptor.Descriptor, field: descriptor.FieldDescriptor, hints: Hints, depth: int) -> st.SearchStrategy:
    """A value for one (non-repeated) occurrence of `field`."""
    t = field.type
    hinted = hints.lookup(owner, field)
    if t == F.TYPE_MESSAGE:
        base = message(field.message_type, hints, depth + 1)
    elif t == F.TYPE_STRING:
        base = texts()
    elif t == F.TYPE_BYTES:
        base = st.one_of(st.sampled_from(BYTES), st.binary(max_size=64))
    elif t == F.TYPE_BOOL:
        base = st.booleans()
    elif t == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        base = st.sampled_from(known + [max(known) + 1, 99, -1, 2 ** 31 - 1, -2 ** 31])
    elif t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        base = st.one_of(st.sampled_from([0.0, -0.0, -1.0, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), 5e-324]),
                         st.floats(width=32 if t == F.TYPE_FLOAT else 64))
    else:
        base = ints(t)
    if isinstance(hinted, st.SearchStrategy):
        return st.one_of(hinted, base)
    if hinted is not None:  # two parts hinted to one part random: hints reach past the first lookup
        fitting = _fitting(field, hinted)
        return st.one_of(pick(fitting, base), pick(fitting, base), base)
    return base


def _fitting(field: descriptor.FieldDescriptor, hinted: Callable[[], list]) -> Callable[[], list]:
    """The hinted values of the field's type (a hint by field name meets fields of other types)."""
    if field.type == F.TYPE_MESSAGE:
        cls = message_factory.GetMessageClass(field.message_type)
        return lambda: [v for v in hinted() if isinstance(v, cls)]
    kind = {F.TYPE_STRING: str, F.TYPE_BYTES: bytes, F.TYPE_BOOL: bool,
            F.TYPE_DOUBLE: float, F.TYPE_FLOAT: float}.get(field.type, int)
    return lambda: [v for v in hinted() if type(v) is kind]


def _map_value(field: descriptor.FieldDescriptor, hints: Hints, depth: int) -> st.SearchStrategy[dict]:
    entry = field.message_type
    key_f, value_f = entry.fields_by_name["key"], entry.fields_by_name["value"]
    keys, values = single(entry, key_f, hints, depth), single(entry, value_f, hints, depth)
    key_of = (lambda i: f"K{i}") if key_f.type == F.TYPE_STRING else (lambda i: i)
    large = st.just(_large_default(value_f)).map(lambda v: {key_of(i): v for i in range(LARGE)})
    return st.one_of(st.just({}), st.dictionaries(keys, values, max_size=4), large)


def field_value(owner: descriptor.Descriptor, field: descriptor.FieldDescriptor, hints: Hints, depth: int) -> st.SearchStrategy:
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        return _map_value(field, hints, depth)
    if field.is_repeated:
        one = single(owner, field, hints, depth)
        large = st.just(_large_default(field)).map(lambda v: [v] * LARGE)
        return st.one_of(st.just([]), st.lists(one, max_size=4), large)
    return single(owner, field, hints, depth)


def assign(msg, field: descriptor.FieldDescriptor, value) -> None:
    slot = getattr(msg, field.name) if field.is_repeated or field.type == F.TYPE_MESSAGE else None
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        value_f = field.message_type.fields_by_name["value"]
        for k, v in value.items():
            if value_f.type == F.TYPE_MESSAGE:
                slot[k].CopyFrom(v)
            else:
                slot[k] = v
    elif field.is_repeated:
        if field.type == F.TYPE_MESSAGE:
            for v in value:
                slot.add().CopyFrom(v)
        else:
            slot.extend(value)
    elif field.type == F.TYPE_MESSAGE:
        slot.CopyFrom(value)
    else:
        setattr(msg, field.name, value)


def message(desc: descriptor.Descriptor, hints: Hints, depth: int = 0) -> st.SearchStrategy:
    """A message of type `desc`: each field unset or drawn; at most one field of each oneof."""
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        pairs = timestamps() if desc.full_name.endswith("Timestamp") else durations()
        return pairs.map(lambda p: cls(seconds=p[0], nanos=p[1]))
    if depth > 6:
        return st.just(cls())
    whole = hints.table.get(desc.name)  # a strategy for the whole message, e.g. a forged page token
    if whole is not None:
        return st.one_of(whole, message(desc, Hints({k: v for k, v in hints.table.items() if k != desc.name}), depth))
    plain, groups = [], []
    for oneof in desc.oneofs:
        if not (len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name):  # not a proto3 `optional`
            groups.append((oneof, [(f, field_value(desc, f, hints, depth)) for f in oneof.fields]))
    grouped = {f.name for _, fs in groups for f, _ in fs}
    plain = [(f, field_value(desc, f, hints, depth), hints.lookup(desc, f) is not None)
             for f in desc.fields if f.name not in grouped]

    @st.composite
    def build(draw):
        msg = cls()
        for f, strategy, hinted in plain:
            if draw(st.booleans()) or (hinted and draw(st.booleans())):  # a hinted field is set 3 times in 4
                assign(msg, f, draw(strategy))
        for _, members in groups:
            chosen = draw(st.sampled_from([None, *members]))
            if chosen is not None:
                assign(msg, chosen[0], draw(chosen[1]))
        return msg
    return build()


def set_paths(msg, prefix: str = "") -> list[str]:
    """The dotted paths of every field set in `msg`, leaves and the messages holding them."""
    found = []
    for field, value in msg.ListFields():
        path = prefix + field.name
        found.append(path)
        if field.type == F.TYPE_MESSAGE and not field.is_repeated:
            found += set_paths(value, path + ".")
    return found


def cleared(msg, path: str):
    """A copy of `msg` with the field at `path` cleared."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    *parents, leaf = path.split(".")
    node = copy
    for p in parents:
        node = getattr(node, p)
    node.ClearField(leaf)
    return copy


def strings_in(msg) -> list[str]:
    """Every string and bytes value in `msg`, nested ones and map keys too (what a message may echo)."""
    found = []
    for field, value in msg.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            values = []
            for k, v in value.items():
                found.append(str(k))
                values.append(v)
            if field.message_type.fields_by_name["value"].type != F.TYPE_MESSAGE:
                found += [v if isinstance(v, str) else repr(v) for v in values]
                continue
        for v in values:
            if isinstance(v, str):
                found.append(v)
            elif isinstance(v, bytes):
                found.append(v.decode(errors="replace"))
            elif hasattr(v, "ListFields"):
                found += strings_in(v)
    return found
