"""The layout holds: the library never imports its entry points, no import cycle anywhere, no product
file reaches into research scripts, the book a learner reads (the core path of train_rl.py) stays
short, and IGNORE_INDEX has one definition."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = ("tests", "docs", "models", "runs", ".venv")
# the most a learner reads: the project files train_rl.py pulls in, transitively
CORE_MAX_FILES, CORE_MAX_LINES, FILE_MAX_LINES = 13, 4000, 560


def project_files() -> dict[str, Path]:
    """{dotted module name: path} of every project .py file outside tests/, docs/, models/."""
    files = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or rel.parts[0].startswith("."):
            continue
        name = ".".join(rel.with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    return files


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (inside functions too), as dotted names: for
    `from a.b import c` both a.b and a.b.c (c may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    return {name: {m for m in imported_modules(path) if m in files and m != name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_minirl_imports_no_top_level_file():
    top_level = {name.split(".")[0] for name in project_files()} - {"minirl"}
    assert {"sp", "rollout", "evaluate", "evaluation", "train_rl", "train_sft", "demo", "bench"} <= top_level
    library = sorted((ROOT / "minirl").glob("*.py"))
    assert len(library) >= 10
    offenders = {p.name: sorted({m.split(".")[0] for m in imported_modules(p)} & top_level) for p in library}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_imported_modules_sees_nested_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os.path\nfrom sp import shard\n\ndef f():\n    from evaluation import evaluate\n")
    assert imported_modules(source) == {"os.path", "sp", "sp.shard", "evaluation", "evaluation.evaluate"}


def test_no_import_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail
    assert cycles(import_graph()) == []


def test_no_product_file_reaches_into_research_scripts():
    """Research scripts live outside main (the research log cites their commit): no product file
    imports, runs or names one, and none patches sys.path to reach a file the layout does not hold."""
    product = [*project_files().values(), ROOT / "Makefile"]
    for path in product:
        text = path.read_text()
        assert "studies/" not in text and "research/" not in text, path
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                    raise AssertionError(f"{path.relative_to(ROOT)} touches sys.path")


def test_the_core_path_stays_short():
    """What train_rl.py pulls in, transitively, is the book a learner reads: about a dozen files and
    4,000 lines, no file longer than a sitting."""
    graph, files = import_graph(), project_files()
    core, todo = set(), ["train_rl"]
    while todo:
        name = todo.pop()
        if name not in core:
            core.add(name)
            todo += graph[name]
    core = {name for name in core if files[name].name != "__init__.py"}
    lines = {name: len(files[name].read_text().splitlines()) for name in core}
    assert len(core) <= CORE_MAX_FILES, sorted(core)
    assert sum(lines.values()) <= CORE_MAX_LINES, lines
    longest = max((len(p.read_text().splitlines()), name) for name, p in files.items())
    assert longest[0] <= FILE_MAX_LINES, longest


def test_ignore_index_is_defined_once():
    """Every file that needs IGNORE_INDEX imports minirl.data's: one definition, so they cannot drift."""
    defined = []
    for path in project_files().values():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IGNORE_INDEX" for t in node.targets):
                defined.append(path.relative_to(ROOT).as_posix())
    assert defined == ["minirl/data.py"]
