"""The house's rules, checked on the source: imports inside vws are relative (each names its
path under services/), they form no cycle, no module uses another's underscored names, and no
module outside the kinds table, the converters and the manager's plug-ins names a kind."""
from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
# Underscored names that belong to the language or a library's public API, not to a module of ours.
PUBLIC_UNDERSCORED = {"_exit", "_getframe", "_replace", "_asdict", "_fields", "_make", "_field_defaults",
                      "_value_", "_name_", "_missing_", "_member_map_", "_generate_next_value_"}


def modules() -> dict[str, pathlib.Path]:
    """vws.x.y -> its file, generated stubs (services/v1) left out."""
    out = {}
    for path in sorted(SERVICES.rglob("*.py")):
        rel = path.relative_to(SERVICES)
        if rel.parts[0] == "v1" or "migrations" in rel.parts:
            continue
        parts = ["vws", *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = modules()


def package_of(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = package_of(importer).split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str):
    """(line, target module, names taken, at top level) for each import of vws's own modules."""
    tree = ast.parse(MODULES[name].read_text())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(name, node)
            if not target.startswith("vws"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, (sub if sub in MODULES else target), alias.name, id(node) in top, node.level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vws"):
                    yield node.lineno, alias.name, "", id(node) in top, 0


def test_imports_inside_vws_are_relative():
    absolute = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {target}"
                for m in MODULES for line, target, _, _, level in imports(m)
                if not level and not target.startswith("vws.native")]
    assert not absolute, "write these as relative imports (from ..common import x):\n" + "\n".join(absolute)


def test_no_import_cycles():
    # imports inside functions count too: they dodge a cycle, they do not end it
    graph = {m: {t for _, t, _, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    # a package's face (__init__) re-exporting its modules is not a dependency of those modules on it
    for m, targets in graph.items():
        targets -= {t for t in list(targets) if MODULES[t].name == "__init__.py" and m.startswith(t + ".")}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def own_underscored(tree: ast.AST) -> set[str]:
    """The underscored names a module defines itself (functions, classes, attributes it assigns)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if n.startswith("_")}


def test_no_module_uses_another_modules_underscored_names():
    found = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        own = own_underscored(tree)
        for line, target, name, _, _ in imports(m):
            if name.startswith("_") and not name.startswith("__") and target != m:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name} from {target}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in PUBLIC_UNDERSCORED and node.attr not in own
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and not (isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "super")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}")
    assert not found, "make these public, or give the part what it needs:\n" + "\n".join(found)


KIND_NAMES = re.compile(r"Kind\.(UNIX_ACCOUNT|SANDBOX|VIRTUAL_MACHINE)\b|KIND_(UNIX_ACCOUNT|SANDBOX|VIRTUAL_MACHINE)\b")


def test_only_the_kinds_table_names_a_kind():
    allowed = {"common/kinds.py", "common/model.py", "common/converters.py"}
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for p in SERVICES.rglob("*.py")
             if p.relative_to(SERVICES).parts[0] != "v1" and "backends" not in p.relative_to(SERVICES).parts
             and str(p.relative_to(SERVICES)) not in allowed
             for i, line in enumerate(p.read_text().splitlines(), 1) if KIND_NAMES.search(line)]
    assert not found, "ask vws.common.kinds for the trait instead:\n" + "\n".join(found)
