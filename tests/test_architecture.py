"""The layering of docs/architecture.md, checked on the source: every module imports only
modules of its own layer or below (lazy imports inside functions included), and no import
cycle exists. A new module must be given its layer here and in the doc."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vaelab"

#: bottom to top; a module's layer is that of its longest listed prefix (dotted, without "vaelab.")
LAYERS = [
    # 0: no vaelab imports beyond errors
    ["version", "errors", "atomicio", "tracking", "devices", "objective", "images", "importance", "rundir", "rundir.progress", "rundir.validate", "latent",
     "latent.gaussian", "latent.flows", "nn.init", "data._text", "data.convert"],
    # 1: data sources, observation models, networks, distributions over z, image grids
    ["data", "transforms", "likelihoods", "nn", "imagegrid", "probes", "latent.priors"],
    # 2: the fitted transform and the typed config
    ["pca", "codes", "config"],
    # 3: presets, the model, prepared data splits, checkpoints
    ["presets", "model", "prepared_data", "rundir.checkpoint"],
    # 4: model families and the metrics
    ["families", "evaluate"],
    # 5: diagnoses and data-parallel plumbing
    ["diagnostics", "distributed"],
    # 6: a finished run, loaded from its directory
    ["rundir.load"],
    # 7: training
    ["training"],
    # 8: analysis: figures, reports, comparisons, sweeps, the write-ups' findings
    ["figures", "report", "compare", "sweep", "findings", "export", "expost"],
    # 9: the shell and the package's public API
    ["cli", "", "__main__"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The vaelab modules ``name`` imports anywhere in its source (names without "vaelab.")."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "vaelab":
                target = node.module[len("vaelab."):] if node.module != "vaelab" else ""
            else:
                continue
            submodules = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            hits = [m for m in submodules if m in known]
            found.update(hits or ([target] if target in known else []))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vaelab":
                    found.add(alias.name[len("vaelab."):] if alias.name != "vaelab" else "")
    found.discard(name)
    return found & known


def layer_of(name: str) -> int:
    best, layer = -1, None
    for index, names in enumerate(LAYERS):
        for prefix in names:
            if (name == prefix or (prefix and name.startswith(prefix + "."))) and len(prefix) > best:
                best, layer = len(prefix), index
    assert layer is not None, f"vaelab.{name} has no layer: add it to LAYERS here and to docs/architecture.md"
    return layer


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_imports_only_its_own_layer_or_below():
    upward = [f"vaelab.{name} (layer {layer_of(name)}) imports vaelab.{dep} (layer {layer_of(dep)})"
              for name, deps in graph().items() for dep in sorted(deps) if layer_of(dep) > layer_of(name)]
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    # a package's __init__ re-exporting its submodules, which import the package's siblings, is no cycle
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself: a layer-0 module importing the trainer is reported."""
    fake = tmp_path / "vaelab" / "errors.py"
    fake.parent.mkdir()
    fake.write_text("from .training import trainer\n")
    assert imports("errors", fake, {"training", "training.trainer"}) == {"training.trainer"}
    assert layer_of("training.trainer") > layer_of("errors")



def absolute_imports(source: str) -> list[str]:
    """``from vaelab...`` / ``import vaelab...`` statements in one module's source, as
    "LINE: statement": inside the package every import of vaelab is relative
    (``from .x import y``), one style throughout."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "vaelab":
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "vaelab"]
    return found


def test_the_package_imports_itself_one_way_only():
    absolute = [f"{path.relative_to(SRC.parent)}:{line}" for path in sorted(SRC.rglob("*.py"))
                for line in absolute_imports(path.read_text())]
    assert not absolute, "write these imports relative (from .module import name):\n" + "\n".join(absolute)


def test_the_style_checker_sees_an_absolute_import():
    source = "from . import errors\nfrom .config import Config\n\ndef f():\n    import vaelab.config\n" \
             "    from vaelab import errors\n    import numpy\n"
    assert absolute_imports(source) == ["5: import vaelab.config", "6: from vaelab import ..."]
