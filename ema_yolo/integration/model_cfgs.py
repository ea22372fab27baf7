"""ema-yolo's model YAMLs by name: the files in `cfg/`, and the twins derived from them by name.

A shipped `<base>-ema.yaml` gives `<base>-<layer>.yaml` for every other layer of the registry
(`ema_yolo.nn.registry`): the same rows with the layer swapped, `EMA` -> `CBAM` in attention rows and `C2fEMA` ->
`C2fCBAM` (`C3EMA`, `C3k2EMA` alike) in in-block rows. No file is written: Ultralytics' `yaml_model_load`, which turns
a model name into its dict for the Python API, the CLI, the trainer and DDP workers, is wrapped (`install`). Names take
Ultralytics' scale letter as the files do: `yolov8s-cbam.yaml` is `yolov8-cbam.yaml` at scale s. A file of that name
in the working directory, or any path, is read as it is.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Callable

from ..nn.registry import REGISTRY

__all__ = ("derive_twin", "install", "model_cfg_dir", "model_names", "resolve_model_cfg", "twin_parent")

_SCALE = re.compile(r"(\d+)([nslmx])(.+)?$")  # Ultralytics' yaml_model_load: yolov8x-ema.yaml -> yolov8-ema.yaml
_PARENT = "ema"  # the layer of the shipped files the twins derive from


def model_cfg_dir() -> Path:
    """Return the folder of ema-yolo's model YAMLs: `ema_yolo/cfg` in a wheel, else the source tree's `cfg/`."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "cfg"
    return packaged if packaged.is_dir() else package.parent / "cfg"


def _bare(name: str | os.PathLike) -> str | None:
    """`name` if it is a bare YAML file name that names no existing file, else None."""
    name = str(name).strip()
    if not name.endswith((".yaml", ".yml")) or os.path.basename(name) != name or os.path.exists(name):
        return None
    return name


def resolve_model_cfg(name: str | os.PathLike) -> Path | None:
    """Return the path of shipped model YAML `name` (a bare file name), or None.

    Example:
        >>> resolve_model_cfg("yolov8-ema.yaml").name
        'yolov8-ema.yaml'
    """
    name = _bare(name)
    path = model_cfg_dir() / name if name else None
    return path if path and path.is_file() else None


def twin_parent(name: str | os.PathLike) -> tuple[str, str] | None:
    """For a derived twin's name, its parent's name (same scale) and the registry key of its layer; else None.

    Example:
        >>> twin_parent("yolov8s-c2f-cbam.yaml")
        ('yolov8s-c2f-ema.yaml', 'cbam')
    """
    name = _bare(name)
    if name is None:
        return None
    stem, suffix = os.path.splitext(name)
    base, _, key = stem.rpartition("-")
    if not base or key == _PARENT or key not in REGISTRY or resolve_model_cfg(_SCALE.sub(r"\1\3", name)):
        return None
    parent = f"{base}-{_PARENT}{suffix}"
    return (parent, key) if resolve_model_cfg(_SCALE.sub(r"\1\3", parent)) else None


def derive_twin(d: dict, key: str) -> dict:
    """A copy of model dict `d` (a shipped `-ema` YAML) with its EMA layers swapped for layer `key`.

    Attention rows (`EMA`) become rows of that layer; in-block rows (`C2fEMA`, `C3EMA`, `C3k2EMA`) become its in-block
    twins. Other rows are unchanged.

    Raises:
        ValueError: If layer `key` has no in-block twins and `d` has in-block rows.
    """
    parent, layer = REGISTRY[_PARENT], REGISTRY[key]
    d = copy.deepcopy(d)
    for row in d.get("backbone", []) + d.get("head", []):
        module = row[2]
        if module == parent.name:
            row[2] = layer.name
        elif isinstance(module, str) and module.endswith(parent.name):  # C2fEMA, C3EMA, C3k2EMA
            if not layer.in_block:
                raise ValueError(f"{layer.name} has no in-block twin of {module}")
            row[2] = module[: -len(parent.name)] + layer.name
    return d


def model_names() -> list[str]:
    """Every model YAML name ema-yolo provides, unscaled: the shipped files and their derived twins, sorted."""
    shipped = sorted(p.name for p in model_cfg_dir().glob("*.yaml"))
    twins = [name.replace(f"-{_PARENT}.yaml", f"-{key}.yaml") for name in shipped if name.endswith(f"-{_PARENT}.yaml")
             for key in REGISTRY if key != _PARENT]  # fmt: skip
    return sorted(shipped + twins)


def _with_packaged_cfgs(check_file: Callable) -> Callable:
    """Wrap Ultralytics' `check_file` so bare names of the shipped YAMLs resolve from any working directory."""

    @functools.wraps(check_file)
    def wrapper(file, *args, **kwargs):
        packaged = resolve_model_cfg(file)
        return str(packaged) if packaged else check_file(file, *args, **kwargs)

    wrapper.ema_yolo_wrapped = check_file
    return wrapper


def _with_twins(yaml_model_load: Callable[[str | Path], dict]) -> Callable[[str | Path], dict]:
    """Wrap Ultralytics' `yaml_model_load` so that a twin's name loads its parent with the layer swapped."""

    @functools.wraps(yaml_model_load)
    def wrapper(path):
        twin = twin_parent(path)
        if twin is None:
            return yaml_model_load(path)
        parent, key = twin
        d = derive_twin(yaml_model_load(parent), key)  # the parent's dict at the name's scale
        d["yaml_file"] = str(path)
        return d

    wrapper.ema_yolo_wrapped = yaml_model_load
    return wrapper


def install(tasks: ModuleType, checks: ModuleType, *importers: ModuleType | None) -> None:
    """Resolve ema-yolo's model names in Ultralytics (idempotent).

    Wraps `checks.check_file` (which only searches Ultralytics' own folder) for the shipped files, and
    `tasks.yaml_model_load` for the twins, also where a module bound that name before this ran.

    Args:
        tasks (module): `ultralytics.nn.tasks`.
        checks (module): `ultralytics.utils.checks`.
        importers (module | None): Modules that may hold `yaml_model_load` by name (None: not imported yet).
    """
    if not hasattr(checks.check_file, "ema_yolo_wrapped"):
        checks.check_file = _with_packaged_cfgs(checks.check_file)
    if not hasattr(tasks.yaml_model_load, "ema_yolo_wrapped"):
        tasks.yaml_model_load = _with_twins(tasks.yaml_model_load)
    for module in importers:
        if module is not None and getattr(module, "yaml_model_load", None) is tasks.yaml_model_load.ema_yolo_wrapped:
            module.yaml_model_load = tasks.yaml_model_load
