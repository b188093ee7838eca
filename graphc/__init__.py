"""graphc: a static computation-graph compiler for neural networks.

import graphc
g = graphc.load("samples/xor.gc")          # parse + infer
model = graphc.to_onnx(g)                  # onnx.ModelProto (inference)
bg = graphc.grad(g)                        # forward + backward graph
"""

from graphc.autodiff import grad
from graphc.builder import Builder, Tensor
from graphc.errors import GraphError, SourceLoc
from graphc.infer import infer
from graphc.ir import Graph, Node, Param, TensorType


def load(path: str) -> Graph:
    """Parse and type-check a .gc model file."""
    from graphc.parser import parse_file

    return parse_file(path)


def parse(text: str, file: str | None = None) -> Graph:
    """Parse and type-check model-file text."""
    from graphc.parser import parse_text

    return parse_text(text, file)


def to_text(graph: Graph) -> str:
    """Canonical .gc text for a graph (comments kept)."""
    from graphc.printer import print_graph

    return print_graph(graph)


def to_onnx(graph: Graph, **kwargs):
    """Lower a graph to an onnx.ModelProto (see graphc.export.export for the options)."""
    from graphc.export import export as _export

    return _export(graph, **kwargs)


__all__ = [
    "Builder",
    "Graph",
    "GraphError",
    "Node",
    "Param",
    "SourceLoc",
    "Tensor",
    "TensorType",
    "grad",
    "infer",
    "load",
    "parse",
    "to_onnx",
    "to_text",
]
__version__ = "0.1.0"
