"""The library's layers import downwards only: each part may use its own layer and those before it.

The subpackages of ``charrnn/`` read bottom to top as the pipeline does: data
feeds the model, scoring and sampling (``evaluation``) use the model, training
uses scoring (validation) and sampling (W&B rows), and the registry judges
trained runs. An upward import (``evaluation`` reaching into ``train``) ties a
lower layer to a higher one's changes; this test names it. Imports inside
functions and under ``TYPE_CHECKING`` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "charrnn"

# Bottom to top. A part is a subpackage of charrnn/ or a module at its top level;
# a new one goes into the lowest layer whose imports it needs.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"errors", "fsutil", "progress", "config", "tracking"}),
    ("data", {"data"}),
    ("model", {"model"}),
    ("io", {"io"}),
    ("distributed", {"distributed"}),
    ("evaluation", {"evaluation"}),
    ("train", {"train"}),
    ("registry", {"registry"}),
    ("sweep", {"sweep"}),
    ("entry", {"cli", "__main__", "__init__"}),
]
LAYER_OF = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}


def part_of(path: Path) -> str:
    """The part a source file belongs to: its subpackage, or its own name at the top level."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(source: str, package: str) -> set[str]:
    """The charrnn parts imported by a module of ``package`` (``charrnn`` or ``charrnn.X``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # A relative import counts up from the module's package: `..` is its parent.
            anchor = package.split(".")[: len(package.split(".")) + 1 - node.level]
            module = ".".join((anchor if node.level else []) + [node.module or ""]).strip(".")
            # `from charrnn import data` imports a part; `from charrnn.data import x` names one.
            names = [f"{module}.{a.name}" for a in node.names] if module == "charrnn" else [module]
        else:
            continue
        found.update(name.split(".")[1] for name in names if name.startswith("charrnn."))
    return found


def upward_imports(part: str, source: str) -> list[str]:
    """``part -> target`` for each import of a higher layer than ``part``'s own."""
    own = LAYER_OF[part]
    package = "charrnn" if part in LAYERS[0][1] | LAYERS[-1][1] else f"charrnn.{part}"
    return [
        f"{part} ({LAYERS[own][0]}) -> {target} ({LAYERS[LAYER_OF[target]][0]})"
        for target in sorted(imported_parts(source, package))
        if target in LAYER_OF and LAYER_OF[target] > own
    ]


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {part_of(path) for path in sources()}
    assert parts - set(LAYER_OF) == set(), "place each new subpackage or top-level module in LAYERS"
    assert set(LAYER_OF) - parts == set(), "LAYERS names a part that no longer exists"


def test_no_part_imports_a_higher_layer():
    found = [
        line
        for path in sources()
        for line in upward_imports(part_of(path), path.read_text(encoding="utf-8"))
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "from charrnn.train.trainer import TrainResult\n",
        "from ..train.trainer import TrainResult\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..train import trainer\n",
        "def f():\n    from charrnn.registry.lines import promote\n",
        "import charrnn.cli\n",
        "from charrnn import registry\n",
        "from .. import registry\n",
    ],
)
def test_the_check_names_an_upward_import(source):
    assert upward_imports("evaluation", source) != []


def test_the_check_allows_downward_same_part_and_outside_imports():
    source = (
        "import torch\nfrom .sample import generate\nfrom ..model.lstm import CharLSTM\n"
        "from charrnn.data.batches import eval_windows\nfrom charrnn import config\n"
    )
    assert upward_imports("evaluation", source) == []
