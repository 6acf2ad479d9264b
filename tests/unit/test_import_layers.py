"""The first-level parts of the `payphone` package import each other without cycles.

Every module under payphone-app/payphone is parsed with `ast`; every import in it
(top level, inside functions, under `if TYPE_CHECKING:`) becomes an edge between
first-level parts: `payphone.speech.vad` counts as `payphone.speech`,
`payphone.config` as itself. A cycle between parts (a strongly connected component
with more than one part) fails the test and is named, with one import per edge.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = "payphone"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "payphone-app" / PACKAGE

# (importing part, imported part) -> "path:line" of one import that makes the edge
Edges = dict[tuple[str, str], str]


def module_name(path: Path) -> str:
    """`payphone-app/payphone/speech/vad.py` -> `payphone.speech.vad` (packages: no `__init__`)."""
    parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str | None:
    """The first-level part a `payphone...` module belongs to; None outside the package."""
    names = module.split(".")
    if names[0] != PACKAGE:
        return None
    return ".".join(names[:2])


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every module (absolute dotted name) an import statement anywhere in `tree` names."""
    found: list[tuple[str, int]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from payphone import speech` imports the part `payphone.speech`
            if target == PACKAGE:
                found.extend((f"{PACKAGE}.{alias.name}", node.lineno) for alias in node.names)
    return found


def package_edges() -> Edges:
    edges: Edges = {}
    parts = {part_of(module_name(p)) for p in PACKAGE_DIR.rglob("*.py")}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = module_name(path)
        source = part_of(module)
        assert source is not None
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target, line in imported_modules(tree, module, path.name == "__init__.py"):
            dest = part_of(target)
            # the bare package (`from payphone import x` where x is a name) is no part
            if dest is None or dest == source or dest not in parts:
                continue
            where = f"{path.relative_to(PACKAGE_DIR.parent)}:{line}"
            edges.setdefault((source, dest), where)
    return edges


def strongly_connected(nodes: set[str], edges: Edges) -> list[list[str]]:
    """Tarjan's algorithm; components in a stable (sorted) order."""
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(components)


def describe(component: list[str], edges: Edges) -> str:
    members = set(component)
    lines = [" <-> ".join(component)]
    for (a, b), where in sorted(edges.items()):
        if a in members and b in members:
            lines.append(f"    {a} -> {b}  ({where})")
    return "\n".join(lines)


def test_the_package_has_modules_to_check() -> None:
    edges = package_edges()
    assert ("payphone.cli", "payphone.config") in edges
    assert len({a for a, _ in edges}) > 5


def test_no_import_cycle_between_first_level_parts() -> None:
    edges = package_edges()
    nodes = {a for a, _ in edges} | {b for _, b in edges}
    cycles = [c for c in strongly_connected(nodes, edges) if len(c) > 1]
    assert not cycles, "import cycles between parts of payphone:\n" + "\n".join(
        describe(c, edges) for c in cycles
    )


def test_the_reply_path_sits_between_llm_and_speech() -> None:
    """`reply` (guard, markup, chunker) uses only config, log and streams; llm, speech and
    hardware use no part above them, so the speech <-> llm <-> hardware cycle cannot come back."""
    edges = package_edges()
    uses: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        uses[a].add(b)
    assert uses["payphone.reply"] <= {"payphone.config", "payphone.log", "payphone.streams"}
    above = {"payphone.reply", "payphone.call", "payphone.stages", "payphone.sim"}
    for low in ("payphone.llm", "payphone.speech", "payphone.hardware"):
        assert not uses[low] & above, f"{low} imports {sorted(uses[low] & above)}"
    assert not uses["payphone.hardware"] & {"payphone.speech", "payphone.llm"}
    assert not uses["payphone.settings_errors"]


def test_pcm_is_imported_from_its_own_module() -> None:
    """`Pcm` has one home, `payphone.pcm`; nothing takes it from a module that happens to use it."""
    root = PACKAGE_DIR.parents[1]
    wrong: list[str] = []
    for folder in ("payphone-app", "tests", "training"):
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.ImportFrom)
                    and any(alias.name == "Pcm" for alias in node.names)
                    and node.module != "payphone.pcm"
                ):
                    wrong.append(f"{path.relative_to(root)}:{node.lineno} ({node.module})")
    assert not wrong, "Pcm imported from elsewhere than payphone.pcm: " + ", ".join(wrong)


def test_the_checker_finds_a_cycle() -> None:
    edges: Edges = {("a", "b"): "x", ("b", "c"): "y", ("c", "a"): "z", ("c", "d"): "w"}
    assert strongly_connected({"a", "b", "c", "d"}, edges) == [["a", "b", "c"], ["d"]]


def test_relative_and_from_package_imports_are_resolved() -> None:
    tree = ast.parse("from . import vad\nfrom ..llm import base\nfrom payphone import config\n")
    found = {m for m, _ in imported_modules(tree, "payphone.speech.tts", is_package=False)}
    assert {"payphone.speech", "payphone.llm", "payphone.config"} <= found
