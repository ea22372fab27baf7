"""Inject ema-yolo's layers and model YAMLs into a stock Ultralytics, without editing its files.

Three facts about Ultralytics 8.4 drive this module:
- `parse_model` resolves a YAML module name with `globals()[name]` of `ultralytics.nn.tasks`, so the layers are
  added to that namespace.
- It passes an unknown module its YAML args unchanged, but first replaces a string arg with the parser's local
  variable of that name, and it records an unknown module's output width as its input width. A wrapper around
  `parse_model` puts `GraphArgs` and the names of the locals `ch` (each layer's real output width), `width` and
  `max_channels` first in every attention row, so the layer is built for the real width of the layer it reads from,
  whatever its `from` and whatever channel count the row writes (`[c2]`, or a literal such as `[512]`, checked
  against its width-scaled value). `tests/test_integration.py` pins this.
- Model YAML names go through `ultralytics.utils.checks.check_file`, which only searches Ultralytics' own folder;
  a wrapper adds the YAMLs shipped with ema-yolo for bare file names.
"""

import functools
import logging
import os
from pathlib import Path

import torch

from ..nn import CA, CBAM, EMA, SE, GraphArgs

__all__ = ("YAML_LAYERS", "model_cfg_dir", "register", "resolve_model_cfg")

YAML_LAYERS = {"EMA": EMA, "CBAM": CBAM, "CA": CA, "SE": SE}  # name in a model YAML -> class
PARSER_LOCALS = ("ch", "width", "max_channels")  # parse_model locals an attention row reads (see _graph_row)

LOGGER = logging.getLogger("ema_yolo")
_width_warnings = set()


def model_cfg_dir():
    """Return the folder of ema-yolo's model YAMLs: `ema_yolo/cfg` in a wheel, else the source tree's `cfg/`."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "cfg"
    return packaged if packaged.is_dir() else package.parent / "cfg"


def resolve_model_cfg(name):
    """Return the path of packaged model YAML `name` (a bare file name), or None.

    Example:
        >>> resolve_model_cfg("yolov8-ema.yaml").name
        'yolov8-ema.yaml'
    """
    name = str(name).strip()
    if not name.endswith((".yaml", ".yml")) or os.path.basename(name) != name or os.path.exists(name):
        return None
    path = model_cfg_dir() / name
    return path if path.is_file() else None


def _with_packaged_cfgs(check_file):
    """Wrap Ultralytics' `check_file` so bare names of ema-yolo's YAMLs resolve from any working directory."""

    @functools.wraps(check_file)
    def wrapper(file, *args, **kwargs):
        packaged = resolve_model_cfg(file)
        return str(packaged) if packaged else check_file(file, *args, **kwargs)

    wrapper.ema_yolo_wrapped = check_file
    return wrapper


def _graph_row(row, index, source):
    """Return model YAML row `[from, n, module, args]` so that an attention layer is built for its input's width.

    The parser resolves the names in PARSER_LOCALS, then calls the layer with GraphArgs first; `complete` then reads
    the width of the layer the row reads from off the parser's `ch` list, and writes the arguments it settled on back
    into the row: the parser prints them, and builds a repeated row's (n > 1) further copies from them.
    """
    f, n, module, written = row
    if module not in YAML_LAYERS:
        return row
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


def _with_graph_widths(parse_model):
    """Wrap Ultralytics' `parse_model` so attention rows take their input width from the graph (see _graph_row)."""

    @functools.wraps(parse_model)
    def wrapper(d, ch, verbose=True):
        source, rows, offset = Path(d.get("yaml_file", "model YAML")).name, {}, 0
        for part in ("backbone", "head"):
            rows[part] = [_graph_row(r, offset + i, source) for i, r in enumerate(d.get(part) or [])]
            offset += len(rows[part])
        return parse_model({**d, **rows}, ch, verbose)

    wrapper.ema_yolo_wrapped = parse_model
    return wrapper


def _check_parse_model(tasks):
    """Build a four-layer model through Ultralytics' parser: fail now, with a clear message, if the mechanism broke."""
    import ultralytics

    # Widths at scale n: 32, 8; layer 2 reads layer 0 (a literal 64 = 32 at this scale), layer 3 reads layer 1 ([c2]).
    d = {"nc": 1, "scales": {"n": [1.0, 0.5, 1024]}, "scale": "n", "head": [], "backbone": [
        [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [16, 3, 1]], [0, 1, "EMA", [64]], [1, 1, "EMA", ["c2", 8]]]}
    try:
        layers, _ = tasks.parse_model(d, ch=3, verbose=False)
        ok = isinstance(layers[2], EMA) and (layers[2].channels, layers[3].channels) == (32, 8)
    except Exception as e:  # noqa: BLE001 - any failure here means the mechanism no longer works
        ok, reason = False, f"{type(e).__name__}: {e}"
    else:
        reason = "the attention layers did not get the width of the layer they read from"
    if not ok:
        raise RuntimeError(
            f"ema-yolo cannot hook into ultralytics {ultralytics.__version__}: its model parser no longer resolves "
            f"YAML layers the way ema-yolo relies on ({reason}). Install a supported version: pip install 'ultralytics>=8.4,<9'"
        )


def register():
    """Make EMA, CBAM, CA and SE resolvable in Ultralytics model YAMLs, and ema-yolo's YAMLs by bare name.

    Idempotent. Also allows the layers in `torch.load(weights_only=True)`, which Ultralytics uses when
    `ULTRALYTICS_SAFE_LOAD=1`.

    Raises:
        RuntimeError: If Ultralytics already defines one of these names as something else, or its model parser no
            longer gives the layers their input channels (checked on a two-layer model, about a millisecond).
    """
    from ultralytics.nn import tasks
    from ultralytics.utils import checks

    namespace = vars(tasks)
    if not hasattr(tasks.parse_model, "ema_yolo_wrapped"):
        tasks.parse_model = _with_graph_widths(tasks.parse_model)
    for name, cls in YAML_LAYERS.items():
        if namespace.get(name, cls) is not cls:
            raise RuntimeError(
                f"ultralytics.nn.tasks already defines {name!r} ({namespace[name]!r}); ema-yolo will not replace it"
            )
        namespace[name] = cls
    _check_parse_model(tasks)
    if not hasattr(checks.check_file, "ema_yolo_wrapped"):
        checks.check_file = _with_packaged_cfgs(checks.check_file)
    torch.serialization.add_safe_globals(list(YAML_LAYERS.values()))
