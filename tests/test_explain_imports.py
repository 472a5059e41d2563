"""The layout's import rules: ``import cnnlens.explain`` loads the speed layer's seam and its light parts only,
and the method files reach the speed layer through that seam alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cnnlens.explain

EXPLAIN = Path(cnnlens.explain.__file__).parent
HEAVY = ("graph", "incremental", "tables", "winograd")


def test_import_explain_loads_no_heavy_accel_module_until_used() -> None:
    script = (
        "import sys, torch\n"
        "import cnnlens.explain\n"
        f"heavy = [f'cnnlens.explain.accel.{{m}}' for m in {HEAVY!r}]\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from cnnlens.explain import occlusion\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),\n"
        "                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2, 3))\n"
        "occlusion(model, torch.rand(1, 1, 8, 8), patch=4, stride=4)\n"
        "print('cnnlens.explain.accel.incremental' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"]  # nothing heavy on import; incremental occlusion loads it on first use


def test_method_files_import_nothing_of_accel_but_the_seam() -> None:
    bad = []
    for path in sorted(EXPLAIN.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n.startswith("cnnlens.explain.accel.")]
    assert bad == []


def test_no_explain_module_imports_another_modules_private_names() -> None:
    bad = []
    for path in sorted(EXPLAIN.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnnlens.explain"):
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert bad == []


def test_no_name_in_the_seam_hides_one_of_its_modules() -> None:
    # `import cnnlens.explain.accel.X as m` reads the attribute X of the package: a function of the seam
    # named like a module would hand back the function (accel.prepared did, when its module was prepared.py)
    import types

    from cnnlens.explain import accel

    modules = [p.stem for p in (EXPLAIN / "accel").glob("*.py") if p.stem != "__init__"]
    shadowed = [m for m in modules if hasattr(accel, m) and not isinstance(getattr(accel, m), types.ModuleType)]
    assert modules and shadowed == []
