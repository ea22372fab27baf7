"""Inject ema-yolo's layers and model YAMLs into a stock Ultralytics, without editing its files.

Four facts about Ultralytics 8.4 drive this module:
- `parse_model` resolves a YAML module name with `globals()[name]` of `ultralytics.nn.tasks`, so the layers are
  added to that namespace.
- It passes an unknown module its YAML args unchanged, but first replaces a string arg with the parser's local
  variable of that name, and it records an unknown module's output width as its input width. `graph_widths` wraps
  `parse_model` to give an attention layer, through those locals, the real width of the layer it reads from,
  whatever its row writes (`[c2]`, or a literal such as `[512]`). `tests/test_integration.py` pins this.
- The exporter switches its head to export mode (`Detect.export = True`) and then fires `on_export_start` with the
  model it will convert; a default callback switches every EMA there to its export-time forward the same way.
- Model YAML names go through `ultralytics.utils.checks.check_file`, which only searches Ultralytics' own folder;
  a wrapper adds the YAMLs shipped with ema-yolo for bare file names.
- Every pretrained load (`YOLO(yaml).load(pt)`, `pretrained=PATH` in the CLI, the Python API and DDP workers) goes
  through `BaseModel.load`, which matches tensors by index; `transfer` wraps it to align layers structurally.
- The trainer turns an integer `freeze` into layer-index prefixes of the model it trains; `freeze` wraps the trainer
  so that they count the stock model's layers (it is patched once `ultralytics.engine.trainer` has executed).
"""

import functools
import os
import sys
from pathlib import Path

import torch

from ..nn import CA, CBAM, EMA, SE
from . import csp_blocks, freeze, graph_widths, transfer

__all__ = ("YAML_LAYERS", "model_cfg_dir", "register", "resolve_model_cfg")

YAML_LAYERS = {"EMA": EMA, "CBAM": CBAM, "CA": CA, "SE": SE}  # name in a model YAML -> class


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


def _export_mode(exporter):
    """Ultralytics `on_export_start` callback: EMA layers of the model being exported use their export forward."""
    for m in exporter.model.modules():
        if isinstance(m, EMA):
            m.export = True


def register():
    """Make EMA, CBAM, CA and SE resolvable in Ultralytics model YAMLs, and ema-yolo's YAMLs by bare name.

    Also gives attention rows their width from the graph (`graph_widths.install`), lets YAML rows name the CSP blocks
    with attention inside (`csp_blocks.install`: C2fEMA, C3EMA, C3k2EMA, ...), and makes pretrained loads structural
    (`transfer.install`): a stock checkpoint lands in a model that inserts attention rows into its architecture.
    Idempotent. Also adds a default `on_export_start` callback that puts EMA layers in export mode, and allows the
    layers in `torch.load(weights_only=True)`, which Ultralytics uses when `ULTRALYTICS_SAFE_LOAD=1`.

    Raises:
        RuntimeError: If Ultralytics already defines one of these names as something else, its model parser no
            longer gives the layers their input channels (checked on a four-layer model, about 2 ms), or
            loading pretrained weights no longer goes through `BaseModel.load` (checked on a three-layer model).
    """
    from ultralytics.nn import tasks
    from ultralytics.utils import checks
    from ultralytics.utils.callbacks.base import default_callbacks

    namespace = vars(tasks)
    graph_widths.install(tasks)
    for name, cls in YAML_LAYERS.items():
        if namespace.get(name, cls) is not cls:
            raise RuntimeError(
                f"ultralytics.nn.tasks already defines {name!r} ({namespace[name]!r}); ema-yolo will not replace it"
            )
        namespace[name] = cls
    _check_parse_model(tasks)
    transfer.install(tasks)
    csp_blocks.install(tasks)
    if not hasattr(checks.check_file, "ema_yolo_wrapped"):
        checks.check_file = _with_packaged_cfgs(checks.check_file)
    trainer = sys.modules.get("ultralytics.engine.trainer")
    if hasattr(trainer, "BaseTrainer"):  # else not imported yet, or executing now: the import hook comes back after it
        freeze.install(trainer)
    if _export_mode not in default_callbacks["on_export_start"]:
        default_callbacks["on_export_start"].append(_export_mode)
    torch.serialization.add_safe_globals(list(YAML_LAYERS.values()))
