"""How the package is layered, checked on its source: no import cycle, no private name imported from another
module, chat templates only in .jinja files, run-file names defined once."""

from __future__ import annotations

import ast
from pathlib import Path

import tailorkit
from tailorkit import run_files

PACKAGE = Path(tailorkit.__file__).parent
# Tiny remote-code models are written to disk and loaded by transformers, not imported by the package.
MODULES = {".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): f
           for f in PACKAGE.rglob("*.py") if "remote_code" not in f.parts}


def _imports(module: str, path: Path):
    """(imported module, imported name or None) for every import in the file, function-level ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            for alias in node.names:
                yield (f"{target}.{alias.name}", None) if f"{target}.{alias.name}" in MODULES else (target, alias.name)
        elif isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m, f) if t in MODULES and t != m} for m, f in MODULES.items()}


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_private_name_is_imported_from_another_module():
    private = [(m, t, name) for m, f in MODULES.items() for t, name in _imports(m, f)
               if name and name.startswith("_") and name != "__future__" and t.startswith("tailorkit")]
    assert not private, private


def test_chat_templates_live_in_jinja_files():
    # Every chat template loops over the messages; a template patch (family.patch_template) edits a few
    # fragments of a .jinja file and never holds that loop.
    found = [(m, node.lineno) for m, f in MODULES.items() for node in ast.walk(ast.parse(f.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and ("for message in messages" in node.value or "for m in messages" in node.value)]
    assert not found, found
    assert len(list((PACKAGE / "models" / "chat_templates").glob("*.jinja"))) >= 17


def test_run_file_names_are_defined_once():
    names = {v for k, v in vars(run_files).items() if k.isupper()}
    elsewhere = [(m, node.value) for m, f in MODULES.items() if m != "tailorkit.run_files"
                 for node in ast.walk(ast.parse(f.read_text()))
                 if isinstance(node, ast.Constant) and node.value in names]
    assert not elsewhere, elsewhere
