"""Inject ema-yolo's layers and model YAMLs into a stock Ultralytics, without editing its files.

Four facts about Ultralytics 8.4 drive this module:
- `parse_model` resolves a YAML module name with `globals()[name]` of `ultralytics.nn.tasks`, so the layers are
  added to that namespace.
- It passes an unknown module its YAML args unchanged, but first replaces a string arg with the parser's local
  variable of that name. At the top of a row `c2` is the previous layer's real (width-scaled) output channel count,
  so a row `[-1, 1, EMA, [c2]]` gives EMA its input channels at every scale. `tests/test_integration.py` pins this.
- The exporter switches its head to export mode (`Detect.export = True`) and then fires `on_export_start` with the
  model it will convert; a default callback switches every EMA there to its export-time forward the same way.
- Model YAML names go through `ultralytics.utils.checks.check_file`, which only searches Ultralytics' own folder;
  a wrapper adds the YAMLs shipped with ema-yolo for bare file names.
"""

import functools
import os
from pathlib import Path

import torch

from ..nn import CA, CBAM, EMA, SE

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
    """Build a two-layer model through Ultralytics' parser: fail now, with a clear message, if the mechanism broke."""
    import ultralytics

    d = {"nc": 1, "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "EMA", ["c2"]]], "head": []}
    try:
        layers, _ = tasks.parse_model(d, ch=3, verbose=False)
        ok = isinstance(layers[1], EMA) and layers[1].channels == 64
    except Exception as e:  # noqa: BLE001 - any failure here means the mechanism no longer works
        ok, reason = False, f"{type(e).__name__}: {e}"
    else:
        reason = "the 'c2' argument did not resolve to the previous layer's channels"
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

    Idempotent. Also adds a default `on_export_start` callback that puts EMA layers in export mode, and allows the
    layers in `torch.load(weights_only=True)`, which Ultralytics uses when `ULTRALYTICS_SAFE_LOAD=1`.

    Raises:
        RuntimeError: If Ultralytics already defines one of these names as something else, or its model parser no
            longer gives the layers their input channels (checked on a two-layer model, about a millisecond).
    """
    from ultralytics.nn import tasks
    from ultralytics.utils import checks
    from ultralytics.utils.callbacks.base import default_callbacks

    namespace = vars(tasks)
    for name, cls in YAML_LAYERS.items():
        if namespace.get(name, cls) is not cls:
            raise RuntimeError(
                f"ultralytics.nn.tasks already defines {name!r} ({namespace[name]!r}); ema-yolo will not replace it"
            )
        namespace[name] = cls
    _check_parse_model(tasks)
    if not hasattr(checks.check_file, "ema_yolo_wrapped"):
        checks.check_file = _with_packaged_cfgs(checks.check_file)
    if _export_mode not in default_callbacks["on_export_start"]:
        default_callbacks["on_export_start"].append(_export_mode)
    torch.serialization.add_safe_globals(list(YAML_LAYERS.values()))
