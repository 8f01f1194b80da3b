"""The package layering of the project's design, checked on every import statement (AST, no import is executed).

  engine/   the model and its runtime: imports engine/ and kernels/ only
  kernels/  fused kernels beside their references: imports kernels/ only
  export/   ONNX export, TensorRT builds: imports engine/, kernels/
  train/    rooms, each importing engine/, kernels/, train.pictures and only the rooms below it:
              games < data < training < evaluation < agents
  play/     the front ends (window, bench): imports engine/, kernels/, export/ (to prepare a backend) and train/'s
            games, episode files, recorder and agents (the real game beside the dream, human recording)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernels", "export", "train", "play")
ALLOWED = {
    "engine": {"engine", "kernels"},
    "kernels": {"kernels"},
    "export": {"engine", "kernels", "export"},
    "train": {"engine", "kernels", "train"},
    "play": {"engine", "kernels", "export", "play", "train.games", "train.data.episodes", "train.data.record",
             "train.agents"},
}
# train/'s rooms, lowest first: a room imports the rooms before it (and itself), never one after it; pictures are
# shared by all and import no room.
ROOMS = ("games", "data", "training", "evaluation", "agents")
SHARED_ROOMS = ("pictures",)


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import of a project package in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = path.relative_to(ROOT).with_suffix("").parts
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..engine import y
                base = ".".join([*here[:-node.level], *([base] if base else [])])
            names = [f"{base}.{a.name}" if base else a.name for a in node.names] if not node.module else [base]
        else:
            continue
        out += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return out


def allowed(package: str, module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED[package])


def room_allows(room: str, module: str) -> bool:
    """Whether a module of train/'s `room` may import `module` (a train.* module)."""
    parts = module.split(".")
    if len(parts) < 2:
        return False   # `import train` itself: name the room
    target = parts[1]
    if target in SHARED_ROOMS:
        return True
    if room in SHARED_ROOMS:
        return target == room
    return target in ROOMS and ROOMS.index(target) <= ROOMS.index(room)


def violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            room = rel.parts[1] if package == "train" and len(rel.parts) > 2 else None
            for line, module in project_imports(path):
                if not allowed(package, module):
                    bad.append(f"{rel}:{line} imports {module} ({package}/ may import "
                               f"{', '.join(sorted(ALLOWED[package]))})")
                elif room is not None and module.split(".")[0] == "train" and not room_allows(room, module):
                    bad.append(f"{rel}:{line} imports {module} (train/{room}/ may import the rooms "
                               f"{', '.join(r for r in ROOMS if room_allows(room, 'train.' + r))}, and pictures)")
    return bad


def test_train_is_only_rooms():
    """Every module of train/ lives in a room (a subpackage whose docstring says what it is for)."""
    loose = [p.name for p in (ROOT / "train").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"train/ modules outside a room: {loose}"
    for room in (*ROOMS, *SHARED_ROOMS):
        doc = ast.get_docstring(ast.parse((ROOT / "train" / room / "__init__.py").read_text()))
        assert doc, f"train/{room}/__init__.py says nothing of what the room is for"


def test_every_import_follows_the_layering():
    assert violations() == []


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The walker finds imports in functions and relative ones: a copy of engine/ that imports export/ fails."""
    fake = tmp_path / "engine"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from export.onnx import export_onnx\n")
    (fake / "rel.py").write_text("from ..play import cli\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    for p in PACKAGES[1:]:
        (tmp_path / p).mkdir()
    (tmp_path / "train" / "data").mkdir()
    (tmp_path / "train" / "data" / "up.py").write_text("from train.evaluation.evaluate import main\n")
    (tmp_path / "train" / "data" / "down.py").write_text("from train.games.builtin import GemsGame\n")
    found = violations()
    assert any("engine/bad.py:2 imports export.onnx" in v for v in found)
    assert any("engine/rel.py:1 imports play" in v for v in found)
    assert any("train/data/up.py:1 imports train.evaluation.evaluate" in v for v in found)
    assert not any("down.py" in v for v in found)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_is_walked(package):
    assert list((ROOT / package).rglob("*.py")), f"{package}/ has no Python files: the layering test sees nothing"
