"""Attention rows take their width from the graph: a wrapper around Ultralytics' `parse_model`.

Ultralytics' parser hands a module it does not know its YAML args unchanged, after replacing each string arg with the
parser's local variable of that name, and records that module's output width as its input width. An attention
layer keeps its input width, so the channel count its row writes carries nothing the graph does not know; written as
a literal (public recipes write the unscaled width, `[-1, 1, EMA, [512]]`, as for `Conv`) it is wrong at most
scales. The wrapper puts `GraphArgs` and the names of the locals `ch` (each layer's real output width), `width` and
`max_channels` first in the row of every layer built by `GraphArgsMeta`, so the layer is built for the real width of
the layer it reads from, whatever its `from`; a literal is checked against its width-scaled value, with one warning
line if they differ. `[c2]` (the previous layer's width) keeps working.
"""

import functools
import logging
from pathlib import Path

from ..nn.graph_args import GraphArgs, GraphArgsMeta

__all__ = ("PARSER_LOCALS", "install")

PARSER_LOCALS = ("ch", "width", "max_channels")  # the parse_model locals an attention row reads

LOGGER = logging.getLogger("ema_yolo")
_width_warnings = set()


def _graph_row(row, index, source, namespace):
    """Return model YAML row `[from, n, module, args]` so that an attention layer is built for its input's width.

    The parser resolves the names in PARSER_LOCALS, then calls the layer with GraphArgs first; `complete` then reads
    the width of the layer the row reads from off the parser's `ch` list, and writes the arguments it settled on back
    into the row: the parser prints them, and builds a repeated row's (n > 1) further copies from them.
    """
    f, n, module, written = row
    if not isinstance(namespace.get(module), GraphArgsMeta):
        return row
    f = f[0] if isinstance(f, (list, tuple)) and len(f) == 1 else f  # [-1] is -1
    if not isinstance(f, int):
        raise ValueError(f"{source}: layer {index} ({module}) reads from {f}: an attention layer reads one layer")
    args = [None, *PARSER_LOCALS, *written]

    def complete(cls, ch, width, max_channels, *given):
        from ultralytics.utils.ops import make_divisible

        if not isinstance(ch, list) or not isinstance(width, (int, float)):
            raise TypeError(f"Ultralytics' parse_model no longer has the locals {PARSER_LOCALS} an attention row reads")
        channels = ch[f]
        if written and written[0] != "c2":  # a literal width, as for Conv: accepted, checked against its scaled value
            if not isinstance(given[0], int) or isinstance(given[0], bool) or given[0] < 1:
                raise ValueError(f"{source}: layer {index} ({module}): width {written[0]!r} is not c2 or an int")
            nominal = make_divisible(min(given[0], max_channels) * width, 8)
            message = (f"{source}: layer {index} {module} [{given[0]}] is {nominal} channels at this scale, but the "
                       f"layer it reads from gives {channels}; using {channels} (write [c2] to take it from the graph)")
            if nominal != channels and message not in _width_warnings:
                _width_warnings.add(message)
                LOGGER.warning(message)
        args[:] = [channels, *given[1 if written else 0 :]]
        return args

    args[0] = GraphArgs(complete)
    return [f, n, module, args]


def _with_graph_widths(parse_model, namespace):
    """Wrap `parse_model`, which looks module names up in `namespace`, so attention rows go through `_graph_row`."""

    @functools.wraps(parse_model)
    def wrapper(d, ch, verbose=True):
        source, rows, offset = Path(d.get("yaml_file", "model YAML")).name, {}, 0
        for part in ("backbone", "head"):
            rows[part] = [_graph_row(r, offset + i, source, namespace) for i, r in enumerate(d.get(part) or [])]
            offset += len(rows[part])
        return parse_model({**d, **rows}, ch, verbose)

    wrapper.ema_yolo_wrapped = getattr(parse_model, "ema_yolo_wrapped", parse_model)  # the stock parser
    wrapper.ema_yolo_graph_widths = True  # functools.wraps carries this to any later wrapper of this one
    return wrapper


def install(tasks):
    """Wrap `tasks.parse_model`, Ultralytics' model parser, so attention rows take their width from the graph.

    Idempotent. `DetectionModel` and the other model classes call `parse_model` through their module's globals, so
    they all see the wrapper. `ema_yolo.integration.ultralytics.register` checks it on a four-layer model.

    Args:
        tasks (module): `ultralytics.nn.tasks`.

    Raises:
        ValueError: At parse time, naming the YAML file and layer, if an attention row reads from several layers or
            writes a channel count that is neither `c2` nor a positive int.

    Example:
        >>> from ultralytics.nn import tasks
        >>> install(tasks)
        >>> model, _ = tasks.parse_model(
        ...     {"nc": 1, "backbone": [[-1, 1, "Conv", [32, 3, 2]], [0, 1, "SE", [32]]], "head": []}, 3, verbose=False)
        >>> model[1].fc1.in_channels
        32
    """
    if not hasattr(tasks.parse_model, "ema_yolo_graph_widths"):
        tasks.parse_model = _with_graph_widths(tasks.parse_model, vars(tasks))
