"""The package layering of the project's design, checked on every import statement (AST, no import is executed).

  engine/   the model and its runtime: imports engine/ and kernels/ only
  kernels/  fused kernels beside their references: imports kernels/ only
  export/   ONNX export, TensorRT builds: imports engine/, kernels/
  train/    games, recording, datasets, training, evaluation: imports engine/, kernels/
  play/     the front ends (window, bench): imports engine/, kernels/, export/ (to prepare a backend) and train/'s
            game adapters (the real game beside the dream, human recording)
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
    "play": {"engine", "kernels", "export", "play", "train.games", "train.episodes", "train.record"},
}


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


def violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in project_imports(path):
                if not allowed(package, module):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({package}/ may import "
                               f"{', '.join(sorted(ALLOWED[package]))})")
    return bad


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
    found = violations()
    assert any("engine/bad.py:2 imports export.onnx" in v for v in found)
    assert any("engine/rel.py:1 imports play" in v for v in found)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_is_walked(package):
    assert list((ROOT / package).rglob("*.py")), f"{package}/ has no Python files: the layering test sees nothing"
