"""The library's layers import downwards only: each module may use its own layer and those before it.

The pipeline reads bottom to top: data feeds the model, scoring and sampling
use the model, training uses scoring (validation) and sampling (W&B rows), and
the registry judges trained runs. An upward import (``evaluate`` reaching into
``train``) ties a lower layer to a higher one's changes; this test names it.
Imports inside functions and under ``TYPE_CHECKING`` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "charrnn"

# Bottom to top. A new module goes into the lowest layer whose imports it needs.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"errors", "fsutil", "progress", "config", "tracking"}),
    ("data", {"shakespeare", "corpus", "vocab", "tokens", "prepare", "data"}),
    ("model", {"precision", "model"}),
    ("io", {"checkpoint", "storage"}),
    ("distributed", {"machine", "distributed", "launch"}),
    ("eval", {"evaluate", "sample"}),
    ("train", {"schedule", "dropout", "validation", "state", "metrics", "train"}),
    ("registry", {"registry", "report", "runs"}),
    ("entry", {"cli", "__main__", "__init__"}),
]
LAYER_OF = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def imported_modules(source: str) -> set[str]:
    """The charrnn modules a module's source imports (relative or absolute, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("charrnn."):
                found.add(node.module.split(".")[1])
            elif node.level == 0 and node.module == "charrnn":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("charrnn."):
                    found.add(alias.name.split(".")[1])
    return found


def upward_imports(module: str, source: str) -> list[str]:
    """``module -> target`` for each import of a higher layer than ``module``'s own."""
    own = LAYER_OF[module]
    return [
        f"{module} ({LAYERS[own][0]}) -> {target} ({LAYERS[LAYER_OF[target]][0]})"
        for target in sorted(imported_modules(source))
        if target in LAYER_OF and LAYER_OF[target] > own
    ]


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules - set(LAYER_OF) == set(), "place each new module in LAYERS"
    assert set(LAYER_OF) - modules == set(), "LAYERS names a module that no longer exists"


def test_no_module_imports_a_higher_layer():
    found = [
        line
        for path in sorted(PACKAGE.glob("*.py"))
        for line in upward_imports(path.stem, path.read_text(encoding="utf-8"))
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "from .train import TrainResult\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .train import TrainResult\n",
        "def f():\n    from charrnn.registry import promote\n",
        "import charrnn.cli\n",
        "from . import runs\n",
    ],
)
def test_the_check_names_an_upward_import(source):
    assert upward_imports("evaluate", source) != []


def test_the_check_allows_downward_and_outside_imports():
    source = "import torch\nfrom .model import CharLSTM\nfrom charrnn.data import eval_windows\n"
    assert upward_imports("evaluate", source) == []
