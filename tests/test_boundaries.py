"""DESIGN.md's rule: only fedsegnet/flare imports nvflare; the algorithm packages never import the adapters."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "custom" / "fedsegnet"
ALGORITHM_PACKAGES = ("data", "networks", "training", "compression", "aggregation")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if "flare" not in p.relative_to(PKG).parts)


def test_package_has_modules():
    assert len(_modules()) >= 10, "the boundary test found too few modules: is PKG right?"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_nvflare_outside_flare(path):
    bad = sorted(n for n in _imports(path) if n == "nvflare" or n.startswith("nvflare."))
    assert not bad, f"{path.relative_to(PKG)} imports {bad}; only fedsegnet/flare/ may import nvflare"


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if p.relative_to(PKG).parts[0] in ALGORITHM_PACKAGES],
    ids=lambda p: str(p.relative_to(PKG)),
)
def test_algorithm_packages_do_not_import_adapters(path):
    bad = sorted(n for n in _imports(path) if n.startswith("fedsegnet.flare") or n == "fedsegnet.cli")
    assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_core_import_does_not_load_nvflare():
    code = (
        "import sys, fedsegnet.training.site, fedsegnet.data.synth, fedsegnet.networks;"
        "print(any(m == 'nvflare' or m.startswith('nvflare.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
