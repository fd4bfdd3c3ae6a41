"""DESIGN.md's rules: only fedsegnet/flare imports nvflare; layers only import downwards (:data:`LAYERS`)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "custom" / "fedsegnet"
ALGORITHM_PACKAGES = ("data", "networks", "privacy", "training", "compression", "aggregation", "ledger", "secagg")


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


LAYERS = (
    ("", "errors", "outputs", "memory", "progress", "notices"),
    ("ledger",),
    ("compression",),
    ("aggregation",),
    ("secagg",),
    ("networks",),
    ("config",),
    ("data",),
    ("privacy",),
    ("training",),
    ("federation", "report", "bundle"),
    ("flare",),
    ("cli",),
)
"""The package's layers, lowest first (``""`` is the package itself, ``fedsegnet/__init__.py``).
A module may import from its own layer and the layers below it, never from a layer above: the
shared bottom (errors, output folders, memory probes, whether a loop shows a progress bar, third-party notices hidden); the ledger of the federation (hashes,
Merkle tree, signatures); the update codec; the server round (which measures updates with the
codec); secure aggregation (masked sums of codec-style updates); the networks; job settings and presets (which name the networks,
aggregation methods and codec bits their job args accept); site data (read under a preset);
differential privacy (DP-SGD over the site's cases, its accountant and budget); local training, evaluation, inference and model files; the in-process federation, the run
report and the MONAI bundle export; the FLARE adapters; the command line."""

LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = ("fedsegnet",) + path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every fedsegnet module ``path`` imports, at module level or inside a
    function; relative imports resolved, ``from fedsegnet import x`` read as ``fedsegnet.x``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names = {f"{base}.{a.name}" for a in node.names} if base == "fedsegnet" else {base}
            found += [(node.lineno, name) for name in sorted(names)]
    return [(line, name) for line, name in found if name == "fedsegnet" or name.startswith("fedsegnet.")]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _all_modules():
    return sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", _all_modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_module_has_a_layer(path):
    layer = _layer(_module_name(path))
    assert layer in LAYER_OF, f"{path.relative_to(PKG)}: {layer!r} is in no layer of LAYERS; place it there"


@pytest.mark.parametrize("path", _all_modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_downwards(path):
    own = LAYER_OF.get(_layer(_module_name(path)))
    bad = []
    for line, module in _imported_modules(path):
        rank = LAYER_OF.get(_layer(module))
        if own is not None and rank is not None and rank > own:
            bad.append(f"line {line}: {module} (layer {rank})")
    assert not bad, f"{path.relative_to(PKG)} (layer {own}) imports from a higher layer of LAYERS: {bad}"


def test_layer_check_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "fedsegnet"
    (pkg / "networks").mkdir(parents=True)
    module = pkg / "networks" / "m.py"
    module.write_text("def f():\n    from fedsegnet.training import loop\n\nfrom ..config import X\nfrom fedsegnet import cli\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert sorted(m for _, m in _imported_modules(module)) == ["fedsegnet.cli", "fedsegnet.config", "fedsegnet.training"]


def test_config_import_does_not_load_torch():
    """Job args are checked (``fedsegnet job ...``) without torch: config imports the registries
    it lists options from only when the options are asked for."""
    code = "import sys, fedsegnet.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
