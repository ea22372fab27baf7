"""Inject ema-yolo's layers and model YAMLs into a stock Ultralytics, without editing its files.

Four facts about Ultralytics 8.4 drive this module:
- `parse_model` resolves a YAML module name with `globals()[name]` of `ultralytics.nn.tasks`, so the layers are
  added to that namespace.
- It passes an unknown module its YAML args unchanged, but first replaces a string arg with the parser's local
  variable of that name, and it records an unknown module's output width as its input width; it scales only its own
  CSP blocks. `parse_model` wraps it once: an attention layer gets, through those locals, the real width of the layer
  it reads from, whatever its row writes (`[c2]`, or a literal such as `[512]`), and an in-block row (`C2fEMA`) is
  built as its stock parent plus attention. `tests/test_integration.py` and `tests/test_csp_attn.py` pin this.
- The exporter switches its head to export mode (`Detect.export = True`) and then fires `on_export_start` with the
  model it will convert; a default callback switches every EMA there to its export-time forward the same way.
- Model YAML names go through `ultralytics.utils.checks.check_file`, which only searches Ultralytics' own folder;
  a wrapper adds the YAMLs shipped with ema-yolo for bare file names. `yaml_model_load` turns a name into its model
  dict; `model_cfgs` wraps it so that the twins of a shipped `-ema` YAML (`yolov8s-cbam.yaml`) derive from it.
- Every pretrained load (`YOLO(yaml).load(pt)`, `pretrained=PATH` in the CLI, the Python API and DDP workers) goes
  through `BaseModel.load`, which matches tensors by index; `transfer` wraps it to align layers structurally.
- The trainer turns an integer `freeze` into layer-index prefixes of the model it trains; `freeze` wraps the trainer
  so that they count the stock model's layers (it is patched once `ultralytics.engine.trainer` has executed).
"""

from __future__ import annotations

import sys

import torch

from ..nn import EMA, REGISTRY
from . import freeze, model_cfgs, parse_model, transfer

__all__ = ("YAML_LAYERS", "register")

YAML_LAYERS = {layer.name: layer.cls for layer in REGISTRY.values()}  # name in a model YAML -> class


def _export_mode(exporter):
    """Ultralytics `on_export_start` callback: EMA layers of the model being exported use their export forward."""
    for m in exporter.model.modules():
        if isinstance(m, EMA):
            m.export = True


def register() -> None:
    """Make the attention layers of the registry resolvable in Ultralytics model YAMLs, and ema-yolo's YAMLs by name.

    The layers (`ema_yolo.nn.registry`: EMA, CBAM, CA, SE, ECA) go into the parser's namespace; the parser hook
    (`parse_model.install`) gives attention rows their width from the graph and builds in-block rows (C2fEMA, C3EMA,
    C3k2EMA, ...); bare names resolve to the shipped YAMLs and their derived twins (`model_cfgs`); pretrained loads are
    structural (`transfer.install`): a stock checkpoint lands in a model that inserts attention rows into its
    architecture. Idempotent. Also adds a default `on_export_start` callback that puts EMA layers in export mode, and
    allows the layers in `torch.load(weights_only=True)`, which Ultralytics uses when `ULTRALYTICS_SAFE_LOAD=1`.

    Raises:
        RuntimeError: If Ultralytics already defines one of these names as something else, its model parser no
            longer builds the rows as ema-yolo relies on (`parse_model.check`, on two tiny models), or loading
            pretrained weights no longer goes through `BaseModel.load` (checked on a three-layer model).
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
    parse_model.install(tasks)
    transfer.install(tasks)
    model_cfgs.install(tasks, checks, sys.modules.get("ultralytics.nn"), sys.modules.get("ultralytics.engine.model"))
    trainer = sys.modules.get("ultralytics.engine.trainer")
    if hasattr(trainer, "BaseTrainer"):  # else not imported yet, or executing now: the import hook comes back after it
        freeze.install(trainer)
    if _export_mode not in default_callbacks["on_export_start"]:
        default_callbacks["on_export_start"].append(_export_mode)
    torch.serialization.add_safe_globals(list(YAML_LAYERS.values()))
