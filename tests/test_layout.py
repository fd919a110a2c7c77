"""The layout stays true: no import cycles, and every wing imports only what it may (README, Layout).

Walks the source with `ast` (nothing is imported), so it also sees imports inside functions: a lazy import
is still a dependency, for cycles and for the direction rules alike (a cycle hidden in a function is still
two modules that cannot be understood apart).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (importer prefix, forbidden prefixes, lazy imports allowed?) -- why: the pipeline is numpy in, judgement out, and runs
# under every wing; the line service runs on the device, where export's torch is absent; only tools reach export,
# and only inside a function (the reference in bench, the lite export in demo), so `agpt run` never needs torch.
RULES = [
    ("runtime.pipeline", ("zmq", "runtime.line", "runtime.sinks", "runtime.tools", "export", "torch", "transformers")),
    ("runtime.line", ("export", "runtime.tools", "torch", "transformers")),
    ("runtime.sinks", ("export", "runtime.tools", "torch", "transformers")),
    ("runtime.names", ("runtime", "export")),
    ("runtime.strict", ("runtime", "export")),
    ("runtime.errors", ("runtime", "export")),
]
TOOLS_LAZY_ONLY = ("export", "torch", "transformers")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, mod: str) -> list[tuple[str, bool]]:
    """(imported module, at top level?) for every import in the file; relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, id(node) in top))
            out += [(f"{base}.{a.name}", id(node) in top) for a in node.names]  # `from pkg import module`
    return out


def graph(root: Path, packages: tuple[str, ...]) -> dict[str, list[tuple[str, bool]]]:
    files = [p for pkg in packages for p in (root / pkg).rglob("*.py")]
    mods = {module_name(root, p): p for p in files}
    return {m: [(i, t) for i, t in imports_of(p, m)] for m, p in mods.items()}


def find_cycle(g: dict[str, list[tuple[str, bool]]]) -> list[str] | None:
    """A cycle among the imports of our own modules, or None (iterative DFS, colours)."""
    edges = {m: sorted({i for i, _ in deps if i in g and i != m}) for m, deps in g.items()}
    colour: dict[str, int] = {}
    for start in sorted(edges):
        if colour.get(start):
            continue
        stack = [(start, iter(edges[start]))]
        path = [start]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not colour.get(nxt):
                colour[nxt] = 1
                stack.append((nxt, iter(edges[nxt])))
                path.append(nxt)
    return None


def violations(g: dict[str, list[tuple[str, bool]]]) -> list[str]:
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    bad = []
    for mod, deps in sorted(g.items()):
        for imp, top in deps:
            for prefix, forbidden in RULES:
                if under(mod, prefix) and any(under(imp, f) and not under(imp, prefix) for f in forbidden):
                    bad.append(f"{mod} imports {imp}")
            if under(mod, "runtime.tools") and top and any(under(imp, f) for f in TOOLS_LAZY_ONLY):
                bad.append(f"{mod} imports {imp} at top level (tools reach export lazily only)")
            if under(mod, "runtime") and top and any(under(imp, f) for f in ("torch", "transformers", "export")):
                bad.append(f"{mod} imports {imp} at top level (the runtime runs without torch)")
    return sorted(set(bad))


def test_no_import_cycles():
    cycle = find_cycle(graph(REPO, ("runtime", "export")))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_wings_import_only_what_they_may():
    assert violations(graph(REPO, ("runtime", "export"))) == []


def test_export_is_never_imported_by_the_line_or_the_pipeline():
    g = graph(REPO, ("runtime",))
    assert any(m.startswith("runtime.pipeline.") for m in g) and any(m.startswith("runtime.line.") for m in g)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_a_planted_cycle_is_found(tmp_path):
    _write(tmp_path, {
        "runtime/__init__.py": "", "runtime/pipeline/__init__.py": "",
        "runtime/pipeline/a.py": "from runtime.pipeline.b import x\n",
        "runtime/pipeline/b.py": "from .c import y\nx = 1\n",
        "runtime/pipeline/c.py": "import runtime.pipeline.a\ny = 2\n",
    })  # fmt: skip
    cycle = find_cycle(graph(tmp_path, ("runtime",)))
    assert cycle is not None and set(cycle) == {"runtime.pipeline.a", "runtime.pipeline.b", "runtime.pipeline.c"}


def test_a_lazy_import_counts_for_cycles_and_directions(tmp_path):
    _write(tmp_path, {
        "runtime/__init__.py": "", "runtime/pipeline/__init__.py": "", "runtime/line/__init__.py": "",
        "runtime/pipeline/a.py": "def f():\n    from runtime.line.b import x\n",
        "runtime/line/b.py": "from runtime.pipeline.a import f\nx = 1\n",
    })  # fmt: skip
    g = graph(tmp_path, ("runtime",))
    assert find_cycle(g) is not None
    assert violations(g) == ["runtime.pipeline.a imports runtime.line.b", "runtime.pipeline.a imports runtime.line.b.x"]


@pytest.mark.parametrize(
    ("mod", "src", "expect"),
    [
        ("runtime/pipeline/p.py", "import zmq\n", "runtime.pipeline.p imports zmq"),
        ("runtime/line/d.py", "from export.reference import Reference\n", "runtime.line.d imports export.reference"),
        ("runtime/tools/t.py", "from export import lite\n", "runtime.tools.t imports export at top level (tools reach export lazily only)"),
        ("runtime/sinks/s.py", "from runtime.tools import bench\n", "runtime.sinks.s imports runtime.tools"),
    ],
)  # fmt: skip
def test_planted_forbidden_imports_are_named(tmp_path, mod, src, expect):
    _write(tmp_path, {"runtime/__init__.py": "", mod: src})
    assert expect in violations(graph(tmp_path, ("runtime",)))


def test_tools_may_import_export_inside_a_function(tmp_path):
    _write(tmp_path, {"runtime/__init__.py": "", "runtime/tools/t.py": "def f():\n    from export.lite import export_lite\n"})
    assert violations(graph(tmp_path, ("runtime",))) == []
