"""The package's layers import one way: core `ssae/` <- `kernels/` <- `export/` <- `runtime/` <- `calibration/`, with
the CLI (`ssae/cli.py`) on top. Imports across root folders are absolute (`from ssae.export import ...`)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Root folder -> (its package, its rank: a module may import only from ranks at or below its own).
ROOTS = {"ssae": ("ssae", 0), "kernels": ("ssae.kernels", 1), "export": ("ssae.export", 2),
         "runtime": ("ssae.runtime", 3), "calibration": ("ssae.calibration", 4)}
#: Modules of the core folder that sit on top of every layer (they import lazily, inside functions).
TOP = {"ssae.cli"}
TOP_RANK = 5
PACKAGES = {pkg for pkg, _ in ROOTS.values()}


def _module(repo: Path, path: Path) -> tuple[str, bool]:
    folder, *rest = path.relative_to(repo).with_suffix("").parts
    parts = [*ROOTS[folder][0].split("."), *rest]
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _rank(module: str) -> int:
    if module in TOP:
        return TOP_RANK
    best = 0
    for pkg, rank in ROOTS.values():
        if module == pkg or module.startswith(pkg + "."):
            best = max(best, rank)
    return best


def _imports(repo: Path, path: Path):
    """(line, imported module, is relative) of every import of an ssae module in the file, inside functions too."""
    module, is_pkg = _module(repo, path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            elif node.module and (node.module == "ssae" or node.module.startswith("ssae.")):
                target = node.module
            else:
                continue
            for alias in node.names:  # `from ssae import philox` imports the module ssae.philox
                yield node.lineno, f"{target}.{alias.name}" if target in PACKAGES else target, bool(node.level)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ssae" or alias.name.startswith("ssae."):
                    yield node.lineno, alias.name, False


def violations(repo: Path) -> list[str]:
    """Every import against the layer order, and every relative import across root folders, under `repo`."""
    wrong = []
    for folder in ROOTS:
        for path in sorted((repo / folder).rglob("*.py")):
            module, _ = _module(repo, path)
            rank = _rank(module)
            where = f"{path.relative_to(repo)}"
            for line, target, relative in _imports(repo, path):
                if _rank(target) > rank:
                    wrong.append(f"{where}:{line} ({module}, layer {rank}) imports {target} (layer {_rank(target)})")
                elif relative and _rank(target) != rank and module not in TOP:
                    wrong.append(f"{where}:{line} imports {target} from another root folder relatively")
    return wrong


def test_layers_import_one_way():
    wrong = violations(REPO)
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_check_finds_reverse_and_relative_imports(tmp_path):
    """On a small tree: a core model importing a kernel, a runtime module importing calibration (inside a
    function), a relative import across root folders, and allowed imports that must pass."""
    files = {
        "ssae/models/net.py": "from ssae.kernels import ops\n",
        "ssae/cli.py": "def main():\n    from ssae.calibration import run\n",
        "kernels/fast.py": "from ssae.models import net\n",
        "export/graph.py": "from ..kernels import fast\n",
        "runtime/editor.py": "def load():\n    from ssae.calibration.run import calibrate\n",
        "calibration/run.py": "from ssae.runtime import editor\nfrom ssae import philox\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    wrong = sorted(violations(tmp_path))
    assert len(wrong) == 3, wrong
    assert wrong[0].startswith("export/graph.py:1 imports ssae.kernels.fast from another root folder relatively")
    assert wrong[1].startswith("runtime/editor.py:2 (ssae.runtime.editor, layer 3) imports ssae.calibration.run")
    assert wrong[2].startswith("ssae/models/net.py:1 (ssae.models.net, layer 0) imports ssae.kernels.ops")
