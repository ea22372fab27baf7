"""Load a stock checkpoint into a model that inserts layers into the same architecture (the `-ema/-cbam/-ca/-se` YAMLs).

Ultralytics' `BaseModel.load` keeps a checkpoint tensor only where its name (`model.<index>.<...>`) and shape match,
so every inserted row shifts the indices of all later layers and their weights silently start from scratch. Every
stock entry point goes through that one method: `YOLO(yaml).load(pt)`, `pretrained=PATH` in `yolo train` and in
`YOLO(yaml).train()`, and the trainer of a multi-GPU worker (whose fresh interpreter registers through the import hook).
`install()` wraps it: the two layer sequences are aligned by module type, parameter shapes and the re-mapped `from`
graph, the checkpoint is re-indexed to the target's layer indices, and the stock method then loads it (so its handling
of a new class count, class-name remapping and the first convolution stays Ultralytics' own). A checkpoint of the same
architecture (resume, a trained EMA model into its own YAML) goes to the stock method untouched.
"""

from __future__ import annotations

import copy
import functools
import weakref
from types import ModuleType

import torch
from torch import nn

from . import start
from .start import layer_sources

__all__ = ("TransferReport", "align_layers", "install", "transfer_report")


def _shapes(layer):
    return tuple((k, tuple(v.shape)) for k, v in layer.state_dict().items())


def _numel(layer):
    return sum(v.numel() for v in layer.state_dict().values() if v.is_floating_point())


def align_layers(src: nn.Sequential, dst: nn.Sequential) -> dict[int, int]:
    """Map each layer of `src` to the layer of `dst` that plays its part, by aligning the two layer sequences.

    Two layers correspond when the target layer is of the source layer's type (or a subclass of it, such as a block
    with attention inside), has the same number of inputs, every source tensor name and shape (the first layers and
    the heads only need the type: input channels and class count may differ, which Ultralytics' load adapts) and
    inputs that correspond. The
    alignment is the order-preserving one that keeps the most values (a longest-common-subsequence over layers, each
    weighted by its parameter count); a pair whose inputs do not correspond under it is dropped. Layers of `dst`
    outside the map are new (inserted) layers, layers of `src` outside it did not transfer.

    Args:
        src (nn.Sequential): Layers of the checkpoint model (`model.model`), each with Ultralytics' `.f` and `.type`.
        dst (nn.Sequential): Layers of the model being loaded.

    Returns:
        (dict[int, int]): Source layer index -> target layer index.

    Example:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> align_layers(DetectionModel("yolov8n.yaml").model, DetectionModel("yolov8n-ema.yaml").model)[9]
        10
    """
    n, m = len(src), len(dst)
    shapes_s, shapes_d = [set(_shapes(s)) for s in src], [set(_shapes(d)) for d in dst]
    values = [1 + _numel(s) for s in src]

    def weight(i, j):
        same_kind = isinstance(dst[j], type(src[i])) and len(layer_sources(src[i], i)) == len(layer_sources(dst[j], j))
        ends = (i, j) in ((0, 0), (n - 1, m - 1))  # input channels and class count may differ; Ultralytics adapts them
        return values[i] if same_kind and (ends or shapes_s[i] <= shapes_d[j]) else 0

    score = [[0] * (m + 1) for _ in range(n + 1)]  # score[i][j]: best alignment of src[i:] with dst[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            w = weight(i, j)
            score[i][j] = max(score[i + 1][j], score[i][j + 1], w + score[i + 1][j + 1] if w else 0)
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        w = weight(i, j)
        if w and score[i][j] == w + score[i + 1][j + 1]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif score[i + 1][j] >= score[i][j + 1]:
            i += 1
        else:
            j += 1

    mapping = {-1: -1}  # the image maps to the image
    matched_s, matched_d = {-1}, {-1}

    def through(layers, k, matched):
        """Follow single-input layers outside the alignment (inserted ones) back to a layer inside it."""
        while k not in matched and len(layer_sources(layers[k], k)) == 1:
            k = layer_sources(layers[k], k)[0]
        return k

    for i, j in pairs:  # in order, so every input's mapping is settled before it is used
        inputs_s = [mapping.get(through(src, k, matched_s)) for k in layer_sources(src[i], i)]
        inputs_d = [through(dst, k, matched_d) for k in layer_sources(dst[j], j)]
        if inputs_s == inputs_d:
            mapping[i] = j
            matched_s.add(i)
            matched_d.add(j)
    del mapping[-1]
    return mapping


class TransferReport:
    """What a load transferred: stock tensors and values that landed, the target's new layers, the source's leftovers.

    Attributes:
        tensors (tuple[int, int]): Floating tensors of the checkpoint that landed unchanged, and their total.
        values (tuple[int, int]): The same in values (elements).
        new_layers (list[tuple[int, str]]): Target layers with tensors that start from their own initialisation:
            (index, type).
        dropped_layers (list[tuple[int, str]]): Checkpoint layers with tensors and no counterpart in the target.
        body_share (float): Share of the checkpoint's values outside its last layer (the head) that landed.
    """

    def __init__(self, src_model: nn.Module, dst_model: nn.Module, mapping: dict[int, int], src_state: dict):
        dst_state = dst_model.state_dict()
        landed = total = landed_values = total_values = body_values = body_landed = 0
        head = len(src_model.model) - 1
        for key, value in src_state.items():  # floating tensors only (the caller leaves out BatchNorm step counts)
            prefix, index, rest = key.split(".", 2) if key.count(".") >= 2 else (key, "-1", "")
            index = int(index) if prefix == "model" and index.isdigit() else -1
            target = f"model.{mapping[index]}.{rest}" if index in mapping else None if index >= 0 else key
            ok = target in dst_state and dst_state[target].shape == value.shape
            ok = ok and bool((dst_state[target].to(value) == value).all())
            total, total_values = total + 1, total_values + value.numel()
            landed, landed_values = landed + ok, landed_values + ok * value.numel()
            if index != head:
                body_values, body_landed = body_values + value.numel(), body_landed + ok * value.numel()
        self.tensors, self.values = (landed, total), (landed_values, total_values)
        self.body_share = body_landed / max(body_values, 1)
        mapped = set(mapping.values())

        def weighted(layers, done):  # layers with tensors only: an unmatched Concat or Upsample has nothing to load
            return [(k, m.type.rsplit(".", 1)[-1]) for k, m in enumerate(layers) if k not in done and m.state_dict()]

        self.new_layers = weighted(dst_model.model, mapped)
        self.dropped_layers = weighted(src_model.model, mapping)

    def __str__(self):
        def layers(entries):
            names = sorted({t for _, t in entries})
            where = ", ".join(f"model.{i}" for i, _ in entries)
            return f"{len(entries)} {'/'.join(names)} layer{'s' * (len(entries) != 1)} ({where})"

        (t, tt), (v, vt) = self.tensors, self.values
        text = f"Transferred {t}/{tt} stock tensors ({v / 1e6:.1f}M/{vt / 1e6:.1f}M values)"
        text += f"; new: {layers(self.new_layers)}" if self.new_layers else ""
        return text + (f"; not transferred: {layers(self.dropped_layers)}" if self.dropped_layers else "")


_reports = weakref.WeakKeyDictionary()  # model -> its last TransferReport; kept off the model so checkpoints stay stock


def transfer_report(model: nn.Module) -> TransferReport | None:
    """Return the `TransferReport` of the last pretrained load into `model` (any architecture), or None.

    Args:
        model (ultralytics.nn.tasks.BaseModel): A model that `load()` was called on, e.g. `trainer.model`.
    """
    return _reports.get(model)


def _reindexed(src_model, mapping, length):
    """A view of `src_model` whose layer `j` is the source layer mapped to target layer `j` (no copy of tensors)."""
    view = copy.copy(src_model)
    view._modules = dict(src_model._modules)  # a shallow copy shares this dict: re-assigning `model` must not leak
    inverse = {j: i for i, j in mapping.items()}
    view.model = nn.Sequential(*(src_model.model[inverse[j]] if j in inverse else nn.Identity() for j in range(length)))
    return view


def _wrap_load(load):
    """Wrap `BaseModel.load` with the structural transfer; same-architecture loads call `load` unchanged."""

    @functools.wraps(load)
    def wrapper(self, weights, verbose=True):
        src_model = (weights.get("ema") or weights["model"]) if isinstance(weights, dict) else weights
        src_layers, dst_layers = getattr(src_model, "model", None), getattr(self, "model", None)
        if not _is_ultralytics_sequence(src_layers) or not _is_ultralytics_sequence(dst_layers):
            return load(self, weights, verbose)
        if getattr(src_model, "is_fused", bool)() and not self.is_fused():  # no BatchNorm to match: Ultralytics warns
            return load(self, weights, verbose)
        mapping = align_layers(src_layers, dst_layers)
        src_state = {k: v.float() for k, v in src_model.state_dict().items() if v.is_floating_point()}
        same = len(src_layers) == len(dst_layers) and all(mapping.get(i) == i for i in range(len(src_layers)))
        source = src_model if same else _reindexed(src_model, mapping, len(dst_layers))
        result = load(self, weights, verbose) if same else load(self, source, verbose=False)  # same: Ultralytics' own
        report = _reports[self] = TransferReport(src_model, self, mapping, src_state)
        placeholder = {i: str(i) for i in range(len(getattr(src_model, "names", {})))}
        if not same and report.tensors[0] == report.tensors[1] and getattr(self, "names", None) == placeholder:
            self.names = dict(src_model.names)  # as the stock load does when every tensor lands
        provided = source.state_dict()
        new_keys = {k for k, v in self.state_dict().items() if k not in provided or provided[k].shape != v.shape}
        started = start.start_new_layers(self, new_keys)
        if verbose and (not same or str(started)):
            from ultralytics.utils import LOGGER

            LOGGER.info("; ".join(t for t in (str(report) if not same else "", str(started)) if t))
            if report.body_share < 0.5:
                LOGGER.warning(
                    f"Only {report.body_share:.0%} of the checkpoint's values outside the detection head landed in this "
                    f"model: is it the same family and scale as the model YAML?"
                )
            for index, why in started.published:
                LOGGER.warning(f"model.{index}: no function-preserving start, {why}; it starts as published")
        return result

    wrapper.ema_yolo_wrapped = load
    return wrapper


def _is_ultralytics_sequence(layers):
    return isinstance(layers, nn.Sequential) and len(layers) > 0 and all(hasattr(m, "f") and hasattr(m, "type") for m in layers)


def _check_load_path(tasks):
    """Load a three-layer model into one with an inserted layer through `BaseModel.load`: fail loudly if it misses."""
    def build(rows):
        model = tasks.BaseModel()
        d = {"nc": 1, "backbone": rows, "head": []}
        model.model, model.save = tasks.parse_model(d, ch=3, verbose=False)
        return model

    conv = [-1, 1, "Conv", [8, 3, 2]]
    src, dst = build([conv, conv, conv]), build([conv, [-1, 1, "Conv", [8, 1, 1]], conv, conv])  # an inserted 1x1
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_()
    try:
        dst.load(src, verbose=False)
        ok = all(torch.equal(src.model[i].conv.weight, dst.model[j].conv.weight) for i, j in ((0, 0), (1, 2), (2, 3)))
    except Exception as e:  # noqa: BLE001 - any failure here means the loading path changed
        ok, reason = False, f"{type(e).__name__}: {e}"
    else:
        reason = "weights after an inserted layer did not land"
    if not ok:
        import ultralytics

        raise RuntimeError(
            f"ema-yolo cannot hook into ultralytics {ultralytics.__version__}: loading pretrained weights no longer goes "
            f"the way ema-yolo relies on ({reason}). Install a supported version: pip install 'ultralytics>=8.4,<9'"
        )


def install(tasks: ModuleType) -> None:
    """Wrap `tasks.BaseModel.load` with the structural transfer (idempotent) and check it on a tiny model.

    Args:
        tasks (module): `ultralytics.nn.tasks`.

    Raises:
        RuntimeError: If Ultralytics' loading path no longer transfers through the wrapper.
    """
    if not hasattr(tasks.BaseModel.load, "ema_yolo_wrapped"):
        tasks.BaseModel.load = _wrap_load(tasks.BaseModel.load)
    _check_load_path(tasks)
