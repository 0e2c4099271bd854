"""The layering kernels <- compute <- visapp <- app.py, and no import circles (lazy imports included;
package __init__ faces excluded), read from the source with ast as the before-stop check reads it."""
import ast
import os
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PKGS = ("kernels", "compute", "visapp")
LOWER = {"kernels": set(), "compute": {"kernels"}, "visapp": {"kernels", "compute"}}


def import_graph():
    g, faces = nx.DiGraph(), set()
    for root in PKGS:
        for d, _, fs in os.walk(ROOT / root):
            for f in fs:
                if not f.endswith(".py"):
                    continue
                p = Path(d) / f
                mod = str(p.relative_to(ROOT))[:-3].replace(os.sep, ".").removesuffix(".__init__")
                g.add_node(mod)
                if f == "__init__.py":
                    faces.add(mod)
                for n in ast.walk(ast.parse(p.read_text())):
                    if isinstance(n, ast.ImportFrom):
                        parts = mod.split(".")
                        base = parts[: len(parts) - n.level + (f == "__init__.py")] if n.level else []
                        tgt = ".".join(base + ([n.module] if n.module else []))
                        names = [tgt + "." + a.name for a in n.names] + [tgt]
                    elif isinstance(n, ast.Import):
                        names = [a.name for a in n.names]
                    else:
                        continue
                    for t in names:
                        if t.split(".")[0] in PKGS and t != mod:
                            g.add_edge(mod, t)
    return g, faces


def test_no_import_circles():
    g, faces = import_graph()
    h = nx.DiGraph((a, b) for a, b in g.edges if b in g.nodes and a not in faces and b not in faces)
    circles = [sorted(c) for c in nx.strongly_connected_components(h) if len(c) > 1]
    assert not circles, f"modules that import each other: {circles}"


def test_arrows_point_one_way():
    g, _ = import_graph()
    bad = [(a, b) for a, b in g.edges if b.split(".")[0] not in LOWER[a.split(".")[0]] | {a.split(".")[0]}]
    assert not bad, f"imports against the layering kernels <- compute <- visapp: {bad[:10]}"


def test_the_graph_sees_lazy_imports():
    """The check reads imports inside functions too (a circle hidden by a lazy import is still a circle)."""
    g, _ = import_graph()
    assert g.has_edge("compute.pipeline", "compute.analysis.sections")     # imported inside analyze()
