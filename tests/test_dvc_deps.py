"""Every DVC stage lists, in its deps, every project module its command runs.

The command of a stage is ``dasi <sub>`` (or ``dasi-tpu <sub>``); its code is the ``<sub>`` function of
``dasi/cli.py`` (``pretrain_tpu/cli.py``)
(plus ``main`` and the CLI module's own imports) and every project module those import,
transitively, including imports inside functions (stages import lazily). A module missing from
``deps`` is a change DVC would not notice: the stage would keep outputs made by other code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = {"dasi", "data_gen", "pretrain", "evals", "instruct", "adapt", "pretrain_tpu"}
CLI = REPO / "dasi" / "cli.py"
CLIS = {"dasi": (CLI, "dasi"), "dasi-tpu": (REPO / "pretrain_tpu" / "cli.py", "pretrain_tpu")}
# Run, not imported: the MaxText venv's Python runs it as a script for pretrain_tpu/venv.py.
SUBPROCESS_SCRIPTS = {REPO / "pretrain_tpu" / "venv.py": REPO / "pretrain_tpu" / "maxtext_side.py"}


def module_file(name: str) -> Path | None:
    """The file of a project module (``a.b`` -> a/b.py or a/b/__init__.py), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported_modules(nodes: list[ast.AST]) -> set[str]:
    """Project modules named by the import statements anywhere under ``nodes``."""
    found = set()
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                # `from pkg import mod` imports a module when pkg/mod.py exists
                found |= {f"{node.module}.{a.name}" for a in node.names
                          if module_file(f"{node.module}.{a.name}") is not None}
    return {m for m in found if module_file(m) is not None}


def with_packages(module: str) -> set[str]:
    """Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(start: set[str]) -> set[Path]:
    seen: set[str] = set()
    todo = set().union(*(with_packages(m) for m in start)) if start else set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_file(mod)
        if path is None:
            continue
        for dep in imported_modules([ast.parse(path.read_text())]):
            todo |= with_packages(dep) - seen
    return {module_file(m) for m in seen if module_file(m) is not None}


def command_functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Sub-command name -> function, from ``@app.command(...)`` decorators (typer's naming)."""
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and getattr(dec.func, "attr", None) == "command" \
                    and getattr(dec.func.value, "id", None) == "app":
                name = dec.args[0].value if dec.args else node.name.replace("_", "-")
                out[name] = node
    return out


def stage_modules(cmd: str) -> set[Path]:
    """Every project module file that ``dasi <sub> ...`` (``dasi-tpu <sub> ...``) runs."""
    words = cmd.split()
    assert words[0] in CLIS, f"stage command does not start with {' or '.join(CLIS)}: {cmd!r}"
    cli, package = CLIS[words[0]]
    tree = ast.parse(cli.read_text())
    funcs = command_functions(tree)
    assert words[1] in funcs, f"{words[0]} has no sub-command {words[1]!r}"
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    main = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    helpers = [n for n in tree.body if isinstance(n, ast.FunctionDef)
               and n.name in {c.id for c in ast.walk(funcs[words[1]]) if isinstance(c, ast.Name)}]
    start = imported_modules([*top, *main, *helpers, funcs[words[1]]]) | {package}
    if words[1] == "config":  # it imports every section's config class by name
        from dasi.sections import SECTIONS

        start |= {target.split(":")[0] for target in SECTIONS.values()}
    # cli.py itself runs, but only these parts of it: its other commands' imports are not walked.
    found = closure(start) | {cli}
    return found | {script for module, script in SUBPROCESS_SCRIPTS.items() if module in found}


# the main pipeline, the adaptation path and the TPU path
PIPELINES = ("dvc.yaml", "adapt/dvc.yaml", "pretrain_tpu/dvc.yaml")


def stages() -> dict[str, dict]:
    """Every stage of every pipeline file (those of adapt/dvc.yaml run from the repository root)."""
    out = {}
    for file in PIPELINES:
        for name, stage in yaml.safe_load((REPO / file).read_text())["stages"].items():
            out[name if file == "dvc.yaml" else f"{file}:{name}"] = stage
    return out


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_list_every_module_it_imports(name):
    stage = stages()[name]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    missing = sorted(str(p.relative_to(REPO)) for p in stage_modules(stage["cmd"]) if not covered(p, deps))
    assert not missing, f"stage {name}: deps miss {missing}"


def test_the_resolver_sees_lazy_imports_and_packages():
    """The check itself: pretrain's closure holds a module imported only inside a function
    (loop, imported in stage.run) and the package __init__ files."""
    mods = {str(p.relative_to(REPO)) for p in stage_modules("dasi pretrain --out x")}
    assert {"pretrain/loop.py", "pretrain/__init__.py", "dasi/cli.py",
            "dasi/model_config.py", "pretrain/pack.py"} <= mods
    assert "data_gen/generate.py" not in mods
    assert not covered(REPO / "pretrain" / "pack.py", ["pretrain/model.py"])
    assert covered(REPO / "data_gen" / "engines" / "base.py", ["data_gen/engines"])
