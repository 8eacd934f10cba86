"""The dependency direction of the package (README, "Layout and design"), checked on its imports."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fedcrm"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


FLOWER_ALLOWED = ("client", "server", "simulations", "deploy")


def test_only_federation_layers_import_flwr() -> None:
    bad, federation = [], []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        flower = any(n == "flwr" or n.startswith("flwr.") for n in _imports(path))
        if rel.parts[0] in FLOWER_ALLOWED:
            federation.append(flower)
        elif flower:
            bad.append(str(rel))
    assert not bad, f"outside {FLOWER_ALLOWED}: {bad} import flwr"
    assert any(federation), "no module imports flwr: the import scan is broken"


def test_server_never_imports_data_or_client() -> None:
    for path in _modules("server"):
        bad = [n for n in _imports(path) if n.startswith(("fedcrm.data", "fedcrm.client"))]
        assert not bad, f"{path.name} imports {bad}"


def test_client_never_imports_server() -> None:
    for path in _modules("client"):
        bad = [n for n in _imports(path) if n.startswith("fedcrm.server")]
        assert not bad, f"{path.name} imports {bad}"


def test_models_and_privacy_know_nothing_of_federation() -> None:
    for sub in ("models", "privacy", "crypto", "data"):
        for path in _modules(sub):
            bad = [
                n
                for n in _imports(path)
                if n.startswith(("fedcrm.client", "fedcrm.server", "fedcrm.simulations"))
            ]
            assert not bad, f"{sub}/{path.name} imports {bad}"


def test_privacy_maths_does_not_import_torch() -> None:
    for name in ("accounting.py", "ledger.py", "budget.py", "verify.py", "signing.py"):
        path = PKG / "privacy" / name
        assert path.is_file(), f"privacy/{name} moved: update this test"
        assert "torch" not in _imports(path), name
