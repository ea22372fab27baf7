"""The one hook into Ultralytics' model parser: attention rows take their width from the graph, and in-block rows
(`C2fEMA`, `C3EMA`, `C3k2EMA`, ...) are built as their stock parents plus attention.

Ultralytics 8.4's `parse_model` (`ultralytics.nn.tasks`) resolves a row's module with `globals()[name]` of that
module, which every model class calls by that global name, so wrapping it there reaches them all. Two facts of the
stock parser shape the one pass this wrapper makes over the rows before calling it:

- **Attention rows.** It hands a module it does not know its YAML args unchanged, after replacing each string arg with
  the parser's local variable of that name, and records that module's output width as its input width. An attention
  layer keeps its input width, so the channel count its row writes carries nothing the graph does not know; written
  as a literal (public recipes write the unscaled width, `[-1, 1, EMA, [512]]`, as for `Conv`) it is wrong at most
  scales. The row gets `GraphArgs` and the names of the locals `ch` (each layer's real output width), `width` and
  `max_channels` first, so the layer (built by `GraphArgsMeta`) is built for the real width of the layer it reads
  from, whatever its `from`; a literal is checked against its width-scaled value, with one warning line if they
  differ. `[c2]` (the previous layer's width) keeps working.
- **In-block rows.** It scales a block's width, inserts its repeat count and applies the C3k2 `c3k` rule (and the
  detection head's `legacy` switch) only for classes in its own private sets, tested by identity, so a subclass of
  C2f would get its YAML arguments unscaled. The row names its stock parent (`C2f` for `C2fEMA`) for the stock
  parser, and the built block then gets its attention layers (`from_stock`: same convolution objects, class switched
  in place).

`check` tries both on tiny models (attention rows at registration, in-block rows when the first in-block row is
parsed) and raises a clear error if a new Ultralytics release broke them. Calling `ultralytics.nn.parse_model` (the re-export) directly bypasses the wrapper; the model classes do not.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Callable

from ..nn.graph_args import GraphArgs, GraphArgsMeta

__all__ = ("PARSER_LOCALS", "check", "install")

PARSER_LOCALS = ("ch", "width", "max_channels")  # the parse_model locals an attention row reads

LOGGER = logging.getLogger("ema_yolo")


def _graph_row(row, index, source, namespace, warned):
    """Return model YAML row `[from, n, module, args]` so that an attention layer is built for its input's width.

    The parser resolves the names in PARSER_LOCALS, then calls the layer with GraphArgs first; `complete` then reads
    the width of the layer the row reads from off the parser's `ch` list, and writes the arguments it settled on back
    into the row: the parser prints them, and builds a repeated row's (n > 1) further copies from them. A warning
    already in `warned` is not logged again.
    """
    f, n, module, written = row
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
            if nominal != channels and message not in warned:
                warned.add(message)
                LOGGER.warning(message)
        args[:] = [channels, *given[1 if written else 0 :]]
        return args

    args[0] = GraphArgs(complete)
    return [f, n, module, args]


def _prepare(d, namespace, warned):
    """One pass over the rows of model dict `d`: a copy for the stock parser, and {row index: in-block class}."""
    source, parts, blocks, index = Path(d.get("yaml_file", "model YAML")).name, {}, {}, 0
    for part in ("backbone", "head"):
        rows = parts[part] = []
        for row in d.get(part) or []:
            module = row[2]
            if isinstance(module, str) and module in namespace:
                if isinstance(namespace[module], GraphArgsMeta):
                    row = _graph_row(row, index, source, namespace, warned)
            elif isinstance(module, str) and module in _in_block_classes():
                blocks[index] = _in_block_classes()[module]
                row = [row[0], row[1], blocks[index].stock.__name__, row[3]]
            rows.append(row)
            index += 1
    return {**d, **parts}, blocks


def _in_block_classes():
    # here, not at import: that module imports Ultralytics, whose import registers ema-yolo (while that module may
    # still be executing: registration itself parses only rows of Ultralytics' own modules)
    from ..nn.csp_attn import CSP_ATTN_BLOCKS

    return CSP_ATTN_BLOCKS


def _parse(parse_model, namespace, warned, d, ch, verbose, check_blocks=True):
    """`parse_model(d, ch, verbose)` with the rows prepared (`_prepare`) and the in-block rows given attention."""
    stock_d, blocks = _prepare(d, namespace, warned)
    if blocks and check_blocks:
        _check_blocks(parse_model)
    layers, save = parse_model(stock_d, ch, verbose)
    added = 0
    for i, cls in blocks.items():
        block = cls.from_stock(layers[i])
        added -= block.np
        block.type, block.np = f"{cls.__module__}.{cls.__name__}", sum(p.numel() for p in block.parameters())
        added += block.np
    if verbose and blocks:  # the stock table above lists these rows under their parent's name and parameter count
        from ultralytics.utils import LOGGER as ULTRALYTICS_LOGGER

        rows = ", ".join(f"{i} {cls.__name__}" for i, cls in blocks.items())
        ULTRALYTICS_LOGGER.info(f"ema-yolo: attention in every bottleneck of rows {rows} (+{added:,} parameters)")
    return layers, save


def _wrap(parse_model: Callable, namespace: dict) -> Callable:
    """Wrap `parse_model`, which looks module names up in `namespace` (module docstring)."""
    warned = set()  # width warnings already logged by this hook

    @functools.wraps(parse_model)
    def wrapper(d, ch, verbose=True):
        return _parse(parse_model, namespace, warned, d, ch, verbose)

    wrapper.ema_yolo_wrapped = parse_model  # the stock parser
    return wrapper


def _fail(what: str, reason: str) -> RuntimeError:
    import ultralytics

    return RuntimeError(
        f"ema-yolo cannot {what} with ultralytics {ultralytics.__version__}: {reason}. Install a supported version: "
        f"pip install 'ultralytics>=8.4,<9'"
    )


def check(parse_model: Callable, namespace: dict | None = None) -> None:
    """Fail loudly unless `parse_model`, wrapped, builds attention and in-block rows as ema-yolo relies on.

    In-block rows (checked when the first in-block row of a process is parsed, once per stock parser): a C3k2EMA row
    at scale m (width, repeats and the `c3k` rule all apply) must build the stock parse of its parent plus attention
    in every bottleneck, and `AttnBottleneck` with its attention replaced by identity must compute what the stock
    `Bottleneck` computes, so a release that changes the bottleneck cannot silently diverge from its subclass.
    Attention rows (`install` checks these at registration): a four-layer model at scale n, whose attention layers
    must get the width of the layer they read from, given as a literal or as `c2`. The models are built on the meta
    device (shapes only), the bottlenecks compared on the CPU, whatever device is the default.

    Args:
        parse_model (callable): The stock parser (`ultralytics.nn.tasks.parse_model` before `install`).
        namespace (dict, optional): Where it looks module names up; default: `ultralytics.nn.tasks`' globals.

    Raises:
        RuntimeError: Naming the Ultralytics version and what no longer works.
    """
    _check_blocks.__wrapped__(parse_model)  # not cached: a test of this parser
    _check_rows(parse_model, namespace)


def _check_rows(parse_model, namespace=None):
    import torch
    from ultralytics.nn import tasks

    from ..nn import EMA

    wrapped = _wrap(parse_model, vars(tasks) if namespace is None else namespace)
    # Widths at scale n: 32, 8; layer 2 reads layer 0 (a literal 64 = 32 at this scale), layer 3 reads layer 1 ([c2]).
    d = {"nc": 1, "scales": {"n": [1.0, 0.5, 1024]}, "scale": "n", "head": [], "backbone": [
        [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [16, 3, 1]], [0, 1, "EMA", [64]], [1, 1, "EMA", ["c2", 8]]]}
    try:
        with torch.device("meta"):
            layers, _ = wrapped(d, ch=3, verbose=False)
        ok = isinstance(layers[2], EMA) and (layers[2].channels, layers[3].channels) == (32, 8)
    except Exception as e:  # noqa: BLE001 - any failure here means the mechanism no longer works
        ok, reason = False, f"{type(e).__name__}: {e}"
    else:
        reason = "the attention layers did not get the width of the layer they read from"
    if not ok:
        raise _fail("hook into ultralytics", f"its model parser no longer resolves YAML layers the way ema-yolo relies "
                    f"on ({reason})")


@functools.cache  # once per stock parser; a failure is not cached, so it is raised at every parse
def _check_blocks(parse_model):
    import torch
    from torch import nn
    from ultralytics.nn import tasks
    from ultralytics.nn.modules.block import Bottleneck

    from ..nn.csp_attn import AttnBottleneck, C3k2EMA

    def rows(block):
        return {"nc": 1, "scale": "m", "scales": {"m": [0.5, 0.5, 1024]}, "head": [],
                "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 2, block, [256, False]]]}  # fmt: skip

    try:
        with torch.device("meta"):
            stock = parse_model(rows("C3k2"), ch=3, verbose=False)[0][1]
            built = _parse(parse_model, vars(tasks), set(), rows("C3k2EMA"), 3, False, check_blocks=False)[0][1]
        with torch.device("cpu"):  # real tensors, also when the first model is built on the meta device
            shapes = [(k, v.shape) for k, v in built.state_dict().items() if ".attn." not in k and "_extra_state" not in k]
            bottlenecks = sum(type(m) is Bottleneck for m in stock.modules())
            attended = sum(isinstance(m, AttnBottleneck) for m in built.modules())
            # multiples of 32: EMA logs nothing
            plain, extended = Bottleneck(32, 32).eval(), AttnBottleneck(32, 32).eval()
            extended.load_state_dict(plain.state_dict(), strict=False)
            extended.attn = nn.Identity()
            x = torch.randn(1, 32, 4, 4)
            with torch.no_grad():
                same = torch.allclose(plain(x), extended(x))
            stock_shapes = [(k, v.shape) for k, v in stock.state_dict().items()]
            ok = type(built) is C3k2EMA and shapes == stock_shapes and attended == bottlenecks > 0 and same
            reason = "the block was not built as the stock parser builds its stock parent" if same else (
                "ultralytics' Bottleneck no longer computes cv2(cv1(x)) plus its shortcut")
    except Exception as e:  # noqa: BLE001 - any failure here means the mechanism no longer works
        ok, reason = False, f"{type(e).__name__}: {e}"
    if not ok:
        raise _fail("build C2fEMA/C3EMA/C3k2EMA rows", f"its model parser or Bottleneck changed ({reason})")


def install(tasks: ModuleType) -> None:
    """Wrap `tasks.parse_model`, Ultralytics' model parser (idempotent), once attention rows pass `check`.

    Also imports `ema_yolo.nn.csp_attn`, which allows its classes in `torch.load(weights_only=True)` (when that
    module is the one importing Ultralytics, whose import led here, it finishes that itself).

    Args:
        tasks (module): `ultralytics.nn.tasks`, with the attention layers already in its namespace.

    Raises:
        RuntimeError: From `check`, if this Ultralytics no longer builds the rows as ema-yolo relies on.
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
    if hasattr(tasks.parse_model, "ema_yolo_wrapped"):
        return
    _check_rows(tasks.parse_model, vars(tasks))
    importlib.import_module("ema_yolo.nn.csp_attn")
    tasks.parse_model = _wrap(tasks.parse_model, vars(tasks))
