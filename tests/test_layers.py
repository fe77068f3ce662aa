"""The house rule: every module of `crossattn` imports only modules of its own layer or of layers below it, and no
two modules import each other (directly or round a loop). Imports inside functions count; those under
``if TYPE_CHECKING:`` (type hints only, never run) do not. The layers are drawn in docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import crossattn

ROOT = Path(crossattn.__file__).parent

# Lowest first. A module belongs to the first layer with a prefix that matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "render", "models")),
    ("text", ("words", "phrases")),
    ("capture", ("capture", "rows")),
    ("families", ("families",)),
    ("concepts", ("concepts",)),
    ("maps", ("heatmaps", "saved", "notebook")),
    ("tracing", ("tracing", "intervention")),
    ("analysis", ("geometry", "placement", "diagnosis", "effects")),
    ("pictures", ("pictures", "reports")),
    ("generation", ("generation", "causal", "explain")),
    ("shapes", ("shapes",)),
    ("interfaces", ("cli", "app", "sweep", "__main__", "__init__")),
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"crossattn.{module} is in no layer: add it to LAYERS and docs/architecture.md")


def _type_checking_only(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """The crossattn modules a file imports when it runs (module-level and inside functions)."""
    module = module_name(path, root)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "__init__":
        package = []
    found: set[str] = set()
    known = {module_name(p, root) for p in root.rglob("*.py")}

    def resolve(base: list[str], names: list[str]) -> None:
        stem = ".".join(base)
        for name in names:  # `from . import placement` names a module; `from .x import f` names a function
            full = f"{stem}.{name}" if stem else name
            found.add(full if full in known else stem)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("crossattn."):
                        found.add(alias.name.removeprefix("crossattn."))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)] if child.level > 1 else list(package)
                    base += child.module.split(".") if child.module else []
                    resolve(base, [a.name for a in child.names])
                elif child.module and child.module.startswith("crossattn"):
                    resolve(child.module.split(".")[1:], [a.name for a in child.names])
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard("")
    found.discard(module)
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_import_goes_down_or_sideways():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    edges = {m: {t for t in ts if t != m and not m.startswith(t + ".")} for m, ts in graph().items()}
    # A package's __init__ re-exporting its own modules is not a loop back into the package.
    cycles, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            walk(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_lazy_imports_and_skips_type_hints(tmp_path):
    """The rule would be empty if imports inside functions slipped through: check the reader on a tiny package."""
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "placement.py").write_text("")
    (tmp_path / "words.py").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("")
    (tmp_path / "sub" / "deep.py").write_text("")
    (tmp_path / "heatmaps.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import words\n"
        "def f():\n    from . import placement\n    from .sub.deep import g\n")
    assert imports_of(tmp_path / "heatmaps.py", tmp_path) == {"placement", "sub.deep"}


def test_no_module_is_longer_than_a_newcomer_reads_top_to_bottom():
    long = {module_name(p): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines (split them by job): {long}"


def test_heat_maps_keep_a_small_surface():
    """At most 20 public names (fields, properties, methods): analyses are functions over maps, not methods."""
    import dataclasses

    from crossattn.heatmaps import HeatMaps

    names = {f.name for f in dataclasses.fields(HeatMaps)} | set(vars(HeatMaps))
    public = sorted(n for n in names if not n.startswith("_"))
    assert len(public) <= 20, public
    assert {"word", "filter", "save", "data", "info"} <= set(public)
