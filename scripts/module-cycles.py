#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a circle.

Reads the graph `cargo modules dependencies` prints (dot), folds every item into the module that
declares it, and looks for strongly connected components among modules over "uses" edges (a
module using its own items, or a parent owning its children, is not a cycle). cargo-modules'
own `--acyclic` works on items, where every method that names its own type is a "cycle", so it
cannot answer this question by itself.

    scripts/module-cycles.py nowconnect-relay [--lib]   # runs cargo modules, prints cycles
"""
import re
import subprocess
import sys

NODE = re.compile(r'^\s*"([^"]+)" \[label="([^"|]*)\|')
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[label="uses"')


def graph(package, extra):
    cmd = ["cargo", "modules", "dependencies", "-p", package, "--no-externs", "--no-sysroot",
           "--no-owns"] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    modules, items, edges = set(), set(), []
    for line in out.splitlines():
        m = NODE.match(line)
        if m:
            kind = m.group(2).split()[-1] if m.group(2).split() else ""
            (modules if kind in ("mod", "crate") else items).add(m.group(1))
            continue
        m = EDGE.match(line)
        if m:
            edges.append((m.group(1), m.group(2)))
    # Items name their module by path; a module with no node of its own still owns its items.
    for path in items:
        modules.add(module_of(path, modules, items))
    return modules, items, edges


def module_of(path, modules, items):
    """The module that declares `path`: itself for a module, else the nearest prefix that is
    not an item (a method's type is an item, its module is not)."""
    if path in modules:
        return path
    path = path.rsplit("::", 1)[0] if "::" in path else path
    while path in items and "::" in path:
        path = path.rsplit("::", 1)[0]
    return path


def cycles(modules, items, edges):
    adj = {m: set() for m in modules}
    for a, b in edges:
        ma, mb = module_of(a, modules, items), module_of(b, modules, items)
        if ma != mb:
            adj.setdefault(ma, set()).add(mb)
    # Tarjan's strongly connected components.
    index, low, on, stack, out, n = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj.get(v, ())):
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

    sys.setrecursionlimit(10000)
    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out, adj


def main():
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    package, extra = sys.argv[1], sys.argv[2:]
    modules, items, edges = graph(package, extra)
    found, adj = cycles(modules, items, edges)
    for comp in found:
        members = set(comp)
        print(f"{package}: modules import each other in a circle:", file=sys.stderr)
        for m in comp:
            inside = sorted(w for w in adj.get(m, ()) if w in members)
            print(f"  {m} -> {', '.join(inside)}", file=sys.stderr)
    if found:
        return 1
    print(f"{package}: {len(modules)} modules, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
