"""The library never imports its entry points (no module of minirl/ imports a top-level file), and
IGNORE_INDEX has one definition."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """The top-level name of every module `path` imports, at any depth (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_minirl_imports_no_top_level_file():
    top_level = {p.stem for p in ROOT.glob("*.py")}
    assert {"sp", "rollout", "eval", "train_rl", "bench"} <= top_level
    library = sorted((ROOT / "minirl").glob("*.py"))
    assert len(library) >= 10
    offenders = {p.name: sorted(imported_modules(p) & top_level) for p in library}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_imported_modules_sees_nested_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os.path\nfrom sp import shard\n\ndef f():\n    from eval import evaluate\n")
    assert imported_modules(source) == {"os", "sp", "eval"}


def test_ignore_index_is_defined_once():
    """Every file that needs IGNORE_INDEX imports minirl.data's: one definition, so they cannot drift."""
    defined = []
    for path in sorted(ROOT.glob("*.py")) + sorted((ROOT / "minirl").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IGNORE_INDEX" for t in node.targets):
                defined.append(path.relative_to(ROOT).as_posix())
    assert defined == ["minirl/data.py"]
