"""Constructor arguments that a model builder completes from the graph, for layers that keep their input width."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ("GraphArgs", "GraphArgsMeta")


class GraphArgs:
    """Stands first in a layer's arguments when only the model builder knows them: `Layer(GraphArgs(complete), *raw)`
    builds `Layer(*complete(Layer, *raw))`.

    An attention layer's width is its input's, a fact of the graph rather than of the model file. Ultralytics' parser
    hands an unknown layer its YAML arguments unchanged, so `ema_yolo.integration.parse_model` puts a GraphArgs first in
    every attention row, and the layer is built for the real width of the layer it reads from.

    Args:
        complete (callable): `complete(cls, *raw)` returns the constructor's positional arguments.

    Example:
        >>> from ema_yolo.nn import SE
        >>> SE(GraphArgs(lambda cls, width, *rest: (width * 2, *rest)), 32).fc1.in_channels
        64
    """

    def __init__(self, complete: Callable[..., tuple]):
        self.complete = complete


class GraphArgsMeta(type):
    """Metaclass of the attention layers: a call whose first argument is a `GraphArgs` is completed by it first."""

    def __call__(cls, *args, **kwargs):
        if args and isinstance(args[0], GraphArgs):
            args = args[0].complete(cls, *args[1:])
        return super().__call__(*args, **kwargs)
