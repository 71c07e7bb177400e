#!/usr/bin/env python3
"""The shape of the house: rooms (modules and their lines), import arrows between them, circles
(modules that import each other, directly or around a loop; imports inside functions count) and
the longest functions. Standard library only.

    python3 tools/house.py [--top N] [--json] [PACKAGE_DIR]

``tests/test_house.py`` keeps the house as its rules want it: no circles, and no function over
``LONG`` lines unless its docstring says why (``Long because ...``).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

LONG = 100
REASON = "Long because"


@dataclass
class House:
    rooms: dict[str, int] = field(default_factory=dict)  # module -> lines
    arrows: dict[str, set[str]] = field(default_factory=dict)  # module -> modules it imports
    functions: list[tuple[int, str, bool]] = field(default_factory=list)  # (lines, where, says why it is long)

    @property
    def circles(self) -> list[list[str]]:
        return _strongly_connected(self.arrows)

    def long(self, limit: int = LONG) -> list[str]:
        """Functions over ``limit`` lines whose docstrings do not say why."""
        return [f"{where} ({n} lines)" for n, where, why in self.functions if n > limit and not why]


def shape(package: Path) -> House:
    root = package.parent
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in sorted(package.rglob("*.py"))}
    house = House()
    for mod, path in modules.items():
        source = path.read_text()
        house.rooms[mod] = source.count("\n")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                house.functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.name}",
                                        REASON in doc))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)  # from a.b import c, c a module
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        house.arrows[mod] = {d for d in deps if d in modules and d != mod}
    house.functions.sort(reverse=True)
    return house


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of two or more modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "p2pnode")
    ap.add_argument("--top", type=int, default=10, help="the longest N functions (default 10)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    h = shape(args.package)
    summary = {
        "modules": len(h.rooms), "lines": sum(h.rooms.values()),
        "over_500_lines": {m: n for m, n in sorted(h.rooms.items(), key=lambda x: -x[1]) if n > 500},
        "import_arrows": sum(len(v) for v in h.arrows.values()),
        "circles": h.circles,
        "functions_over_100_lines": h.long(),
        "longest_functions": [f"{where} ({n})" for n, where, _ in h.functions[:args.top]],
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
        return 0
    for key, value in summary.items():
        if isinstance(value, list) and value and key == "longest_functions":
            print(f"{key}:")
            for line in value:
                print(f"  {line}")
        else:
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
