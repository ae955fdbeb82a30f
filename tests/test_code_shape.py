"""The package stays readable: no function in src/ over a page, train() included."""

import ast
from pathlib import Path

import fmnist_alexnet

SOURCE = Path(fmnist_alexnet.__file__).parent
PAGE = 60  # lines, the def line to the last line of the body


def function_lengths() -> dict[str, int]:
    lengths = {}
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{path.relative_to(SOURCE)}:{node.lineno}:{node.name}"
                lengths[name] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_a_page():
    lengths = function_lengths()
    assert any(name.endswith(":train") and name.startswith("train/loop.py") for name in lengths)
    too_long = {name: n for name, n in lengths.items() if n > PAGE}
    assert not too_long, too_long
