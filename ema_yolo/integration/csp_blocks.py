"""Let model YAMLs use the CSP blocks with attention inside (`ema_yolo.nn.csp_attn`: C2fEMA, C3EMA, C3k2EMA, ...).

Ultralytics' `parse_model` scales a block's width, inserts its repeat count and applies the C3k2 `c3k` rule (and the
detection head's `legacy` switch) only for classes in its own private sets, tested by identity; any other class gets
its YAML arguments unscaled and an output width equal to its input. So a subclass of C2f named in a YAML would be
built with the wrong widths. The injection point is the module function `ultralytics.nn.tasks.parse_model`, which
every model class calls by that global name: `install()` wraps it so that the stock parser builds the stock parent
of each such row (`C2f` for `C2fEMA`) with all its rules, and the built block then gets its attention layers
(`from_stock`: same convolution objects, class switched in place). Rows of other modules are untouched.

The first time a YAML uses one of these blocks, the wrapper checks the mechanism on a two-row model at scale m
(the block must come out as the stock parser builds its stock parent, plus attention, and the attention bottleneck
must compute what the stock one computes) and raises a clear error if a new Ultralytics release broke it. Calling
`ultralytics.nn.parse_model` (the re-export) directly bypasses the wrapper; the model classes do not.
"""

import copy
import functools
import importlib

__all__ = ("install",)

_checked = []  # [True] once the mechanism has been checked in this process


def _attention_rows(d):
    """Row index -> block class, for the rows of model dict `d` that name a CSP block with attention."""
    from ..nn.csp_attn import CSP_ATTN_BLOCKS  # here, not at import: that module imports Ultralytics

    rows = d.get("backbone", []) + d.get("head", [])
    names = [row[2] if isinstance(row[2], str) else None for row in rows]
    return {i: CSP_ATTN_BLOCKS[name] for i, name in enumerate(names) if name in CSP_ATTN_BLOCKS}


def _as_stock(d, blocks):
    """A copy of `d` whose attention-block rows name their stock parents."""
    d = copy.copy(d)
    offset = 0
    for part in ("backbone", "head"):
        rows = d[part] = list(d.get(part, []))
        for k, (f, n, _, args) in enumerate(rows):
            if offset + k in blocks:
                rows[k] = [f, n, blocks[offset + k].stock.__name__, args]
        offset += len(rows)
    return d


def _wrap_parse_model(parse_model):
    """Wrap `tasks.parse_model`: attention-block rows are parsed as their stock parents, then given attention."""

    @functools.wraps(parse_model)
    def wrapper(d, ch, verbose=True):
        blocks = _attention_rows(d)
        if not blocks:
            return parse_model(d, ch, verbose)
        if not _checked:
            _check(parse_model)
            _checked.append(True)
        layers, save = parse_model(_as_stock(d, blocks), ch, verbose)
        added = 0
        for i, cls in blocks.items():
            block = cls.from_stock(layers[i])
            added -= block.np
            block.type, block.np = f"{cls.__module__}.{cls.__name__}", sum(p.numel() for p in block.parameters())
            added += block.np
        if verbose:  # the stock table above lists these rows under their parent's name and parameter count
            from ultralytics.utils import LOGGER

            rows = ", ".join(f"{i} {cls.__name__}" for i, cls in blocks.items())
            LOGGER.info(f"ema-yolo: attention in every bottleneck of rows {rows} (+{added:,} parameters)")
        return layers, save

    wrapper.ema_yolo_wrapped = getattr(parse_model, "ema_yolo_wrapped", parse_model)  # the stock parser
    wrapper.ema_yolo_csp_blocks = True  # functools.wraps carries this to any later wrapper of this one
    return wrapper


def _check(parse_model):
    """Fail loudly unless a C3k2EMA row builds the stock C3k2 plus attention, and a bottleneck still computes the same.

    The row is parsed at scale m (width, repeats and the `c3k` rule all apply) and compared with the stock parse of
    its parent; `AttnBottleneck` with its attention replaced by identity must compute what the stock `Bottleneck`
    computes, so a release that changes the bottleneck cannot silently diverge from its subclass.
    """
    import torch
    import ultralytics
    from torch import nn
    from ultralytics.nn.modules.block import Bottleneck

    from ..nn.csp_attn import AttnBottleneck, C3k2EMA

    def rows(block):
        return {"nc": 1, "scale": "m", "scales": {"m": [0.5, 0.5, 1024]}, "head": [],
                "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 4, block, [512, False]]]}  # fmt: skip

    try:
        with torch.device("cpu"):  # real tensors even when the first CSP model is built on the meta device
            stock = parse_model(rows("C3k2"), ch=3, verbose=False)[0][1]
            parsed = parse_model(_as_stock(rows("C3k2EMA"), {1: C3k2EMA}), ch=3, verbose=False)
            built = C3k2EMA.from_stock(parsed[0][1])
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
            ok = shapes == stock_shapes and attended == bottlenecks > 0 and same
            reason = "the block was not built as the stock parser builds its stock parent" if same else (
                "ultralytics' Bottleneck no longer computes cv2(cv1(x)) plus its shortcut")
    except Exception as e:  # noqa: BLE001 - any failure here means the mechanism no longer works
        ok, reason = False, f"{type(e).__name__}: {e}"
    if not ok:
        raise RuntimeError(
            f"ema-yolo cannot build C2fEMA/C3EMA/C3k2EMA rows with ultralytics {ultralytics.__version__}: its model "
            f"parser or Bottleneck changed ({reason}). Install a supported version: pip install 'ultralytics>=8.4,<9'"
        )


def install(tasks):
    """Wrap `tasks.parse_model` (idempotent) so YAML rows may name the CSP blocks with attention inside.

    Also imports `ema_yolo.nn.csp_attn`, which allows its classes in `torch.load(weights_only=True)`. When that module
    is the one being imported (it imports Ultralytics, whose import registers ema-yolo), it finishes that itself.

    Args:
        tasks (module): `ultralytics.nn.tasks`.
    """
    importlib.import_module("ema_yolo.nn.csp_attn")
    if not hasattr(tasks.parse_model, "ema_yolo_csp_blocks"):
        tasks.parse_model = _wrap_parse_model(tasks.parse_model)
