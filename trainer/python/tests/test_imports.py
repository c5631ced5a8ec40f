"""The package's modules import one way: no import cycle (module- or function-level) and no private names
imported from another module. Read from the source with ast, so it sees imports that never run in a test."""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, List, Set, Tuple

import pytest

PKG = "vlmdiff_train"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PKG


def module_files(root: pathlib.Path = ROOT) -> Dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py under the package (a package is its __init__)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports_of(name: str, path: pathlib.Path, modules: Dict[str, pathlib.Path]) -> List[Tuple[str, str, int]]:
    """(imported package module, imported name or "", line) for every import in the file, at any depth.

    `from .x import y` where x.y is a module counts as an import of x.y; otherwise of x with name y."""
    pkg = name.split(".")[0]
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == pkg or a.name.startswith(pkg + "."):
                    found.append((a.name, "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == pkg or target.startswith(pkg + ".")):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in modules:
                    found.append((sub, "", node.lineno))
                else:
                    found.append((target, a.name, node.lineno))
    return found


def graph(modules: Dict[str, pathlib.Path]) -> Dict[str, Set[str]]:
    g: Dict[str, Set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        for target, _, _ in imports_of(m, p, modules):
            if target != m and target in modules:
                g[m].add(target)
    return g


def cycles(g: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    modules = module_files()
    assert f"{PKG}.model_file" in modules and f"{PKG}.nets.sgn" in modules, sorted(modules)
    g = graph(modules)
    assert g[f"{PKG}.reference"], "the walker found no imports of reference.py: it is broken"
    found = cycles(g)
    assert not found, f"import cycles: {found}"


def test_no_private_names_from_other_modules():
    modules = module_files()
    bad = []
    for m, p in modules.items():
        for target, nm, line in imports_of(m, p, modules):
            if nm.startswith("_") and target != m:
                bad.append(f"{p.relative_to(ROOT.parent)}:{line}: imports {nm} from {target}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_every_imported_name_exists():
    """Every `from .x import name` names something x defines, function-level imports included: those run only on
    their own path (gpu_check's ran only on a GPU machine, and one name had moved away unnoticed)."""
    import importlib
    modules = module_files()
    bad, checked = [], 0
    for m, p in modules.items():
        for target, nm, line in imports_of(m, p, modules):
            if not nm or nm == "*":
                continue
            checked += 1
            if not hasattr(importlib.import_module(target), nm):
                bad.append(f"{p.relative_to(ROOT.parent)}:{line}: {nm} is not in {target}")
    assert checked > 50, f"only {checked} imported names found: the walker is broken"
    assert not bad, "imported names that do not exist:\n" + "\n".join(bad)


def test_model_file_is_a_leaf():
    """model_file imports nothing of the package that could import it back (nets, presets, tokenizer and
    onnx_torch import no other package module than nets/constants)."""
    modules = module_files()
    allowed = {f"{PKG}.presets", f"{PKG}.tokenizer", f"{PKG}.onnx_torch", f"{PKG}.constants"}
    deps = {t for t, _, _ in imports_of(f"{PKG}.model_file", modules[f"{PKG}.model_file"], modules)}
    assert all(d in allowed or d.startswith(f"{PKG}.nets") for d in deps), deps


@pytest.mark.parametrize("src,want", [
    # a two-module cycle through a function-level import is found
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, [["P.a", "P.b"]]),
    # a relative import from a subpackage resolves to the parent's module
    ({"a.py": "from .sub import c\n", "sub/__init__.py": "", "sub/c.py": "from ..a import y\n"}, [["P.a", "P.sub.c"]]),
    ({"a.py": "from . import b\n", "b.py": "import os\n"}, []),
])
def test_cycle_finder(tmp_path, src, want):
    root = tmp_path / "P"
    for rel, text in {"__init__.py": "", **src}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    assert cycles(graph(module_files(root))) == want
