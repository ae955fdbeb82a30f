"""The shape of the code, for restructuring work: the longest functions, and every place that
reads a checkpoint or contract key name by string (``x["model"]``, ``x.get("arch")``).

The key count is deliberately broad: it also catches metrics rows, bench results and flag
dicts that use the same names, so read the ``-v`` list to tell which hits read a checkpoint.

Usage: python benchmarks/code_shape.py [SRC_DIR] [-v]   (default src/fmnist_alexnet)
"""

from __future__ import annotations

import ast
import collections
import sys
from pathlib import Path

KEYS = {
    # what a checkpoint holds
    "format_version", "model", "train_model", "ema_updates", "optimizer", "scheduler", "epoch",
    "step", "best_val_acc", "best_epoch", "elapsed_s", "epoch_sums", "rng", "config", "spec",
    # the model's input contract and the settings read beside it
    "arch", "num_classes", "class_names", "image_size", "mean", "std", "resize_mode",
    "precision", "val_size", "split_seed", "dropout",
}  # fmt: skip


def string_key(node: ast.AST) -> str | None:
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.ctx, ast.Load)
        and isinstance(node.slice, ast.Constant)
        and node.slice.value in KEYS
    ):
        return node.slice.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value in KEYS
    ):
        return node.args[0].value
    return None


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "-v"]
    root = Path(args[0] if args else "src/fmnist_alexnet")
    lengths, hits = [], []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
            key = string_key(node)
            if key:
                hits.append((str(name), node.lineno, key))
    lengths.sort(reverse=True)
    print("longest functions (lines):", ", ".join(f"{f} {n}" for n, f in lengths[:5]))
    per_file = collections.Counter(file for file, _, _ in hits)
    print(f"string-keyed reads of checkpoint/contract names: {len(hits)} in {len(per_file)} files")
    for file, count in sorted(per_file.items()):
        print(f"  {file}: {count}")
    if "-v" in sys.argv:
        for file, line, key in sorted(hits):
            print(f"    {file}:{line} {key}")


if __name__ == "__main__":
    main()
