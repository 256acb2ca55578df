"""The package's layers import one way: core `ssae/` <- `kernels/` <- `export/` <- `runtime/` <- `calibration/`, with
the CLI (`ssae/cli.py`) on top. Imports across root folders are absolute (`from ssae.export import ...`)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Root folder -> (its package, its rank: a module may import only from ranks at or below its own).
ROOTS = {"ssae": ("ssae", 0), "kernels": ("ssae.kernels", 1), "export": ("ssae.export", 2),
         "runtime": ("ssae.runtime", 3), "calibration": ("ssae.calibration", 4)}
#: Modules of the core folder that sit on top of every layer (they import lazily, inside functions).
TOP = {"ssae.cli"}
TOP_RANK = 5


def _module(path: Path) -> tuple[str, bool]:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
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


def _imports(path: Path):
    """(line, imported module, is relative) of every import of an ssae module in the file."""
    module, is_pkg = _module(path)
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
            # `from ssae import philox` imports the module ssae.philox
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}" if target in {p for p, _ in ROOTS.values()} else target, bool(node.level)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ssae" or alias.name.startswith("ssae."):
                    yield node.lineno, alias.name, False


def _sources():
    for folder in ROOTS:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_layers_import_one_way():
    wrong = []
    for path in _sources():
        module, _ = _module(path)
        rank = _rank(module)
        for line, target, _ in _imports(path):
            if _rank(target) > rank:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({module}, layer {rank}) imports {target} "
                             f"(layer {_rank(target)})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_imports_across_root_folders_are_absolute():
    wrong = []
    for path in _sources():
        module, _ = _module(path)
        for line, target, relative in _imports(path):
            if relative and _rank(target) != _rank(module) and module not in TOP:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {target} relatively")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module,target,expected", [("ssae.models.sae", "ssae.kernels.ops", 1),
                                                    ("ssae.runtime.editor", "ssae.calibration.run", 4)])
def test_checker_sees_a_reverse_import(tmp_path, module, target, expected):
    """The checker itself: a core module importing a kernel module, a runtime module importing calibration."""
    assert _rank(target) == expected and _rank(target) > _rank(module)
