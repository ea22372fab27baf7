"""`ema-yolo attention`: what each attention layer of one or more models weights on an image, with EigenCAM.

For every image and model: one PNG per attention layer (`<stem>/<model>/layer<i>-<Type>.png`, or
`layer<i>.<path>-<Type>.png` for one inside row i's block; its spatial weights upsampled and overlaid, the colour bar
in the layer's own weight units), the model's EigenCAM (`<stem>/<model>/eigencam.png`), and a sheet
`<stem>-sheet.png`: detections, EigenCAM, then every attention layer, one model's panels in a grid, several models
side by side. The output folder appears only when everything is written.
"""

import argparse
import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np

from ..cli_format import HelpFormatter
from ..models import ModelError, open_model

__all__ = ("VizError", "explain_image", "main", "write_attention")


class VizError(Exception):
    """Bad input for `ema-yolo attention` (the message names the file)."""


def _read_images(source):
    """[(path, BGR image)] of an image file or of every image in a folder; VizError names any unreadable one."""
    import cv2

    from ..data.images import image_files

    source = Path(source)
    try:
        paths = image_files(source)
    except FileNotFoundError:
        raise VizError(f"{source}: no such image or folder") from None
    if not paths:
        raise VizError(f"{source}: no images in this folder")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        shared = sorted({s for s in stems if stems.count(s) > 1})
        raise VizError(f"{source}: several images share a file stem, e.g. {shared[:3]}")
    images = []
    for path in paths:
        image = cv2.imread(str(path))
        if image is None:
            raise VizError(f"{path}: not a readable image")
        images.append((path, image))
    return images


def _run_name(spec):
    """The run folder's name of a run's `weights/best.pt` or `weights/last.pt`, else None."""
    path = Path(spec)
    return path.parent.parent.name if path.stem in {"best", "last"} and path.parent.name == "weights" else None


def _load_models(specs):
    """[(label, YOLO)] for checkpoints or YAMLs, labelled so that the labels tell the models apart.

    A run's best.pt/last.pt is labelled by its run folder, other files by their stem. Where that label says nothing
    (Ultralytics' default run names `train`, `train2`, ...) or several models share it, the model's YAML stem
    (e.g. `yolov8n-ema`) labels it instead; labels that still collide get `-2`, `-3`, ... in command-line order.
    """
    import re

    models, labels = [], []
    for spec in specs:
        try:
            model = open_model(spec)
        except ModelError as e:
            raise VizError(str(e)) from None
        if model.task == "classify":
            raise VizError(f"{spec}: a classification model; attention pictures need a detection-style head")
        models.append(model)
        labels.append(_run_name(spec) or Path(spec).stem)
    unclear = [re.fullmatch(r"train\d*", label) or labels.count(label) > 1 for label in labels]
    for i, model in enumerate(models):
        yaml_file = getattr(model.model, "yaml", {}).get("yaml_file")
        if unclear[i] and yaml_file:
            labels[i] = Path(yaml_file).stem
    unique = []
    for label in labels:
        unique.append(label if label not in unique else f"{label}-{len(unique) + 1}")
    return list(zip(unique, models))


def _to_image(maps, input_shape, image_shape):
    """Maps (K, h, w) in the letterboxed input's frame -> (K, H, W) numpy on the original image (padding cut)."""
    import torch.nn.functional as F
    from ultralytics.utils.ops import scale_masks

    maps = F.interpolate(maps[None].float(), size=input_shape, mode="bilinear", align_corners=False)
    return scale_masks(maps, image_shape[:2])[0].numpy()


def explain_image(model, image, imgsz=640, conf=0.25, device="cpu"):
    """Run `model` on one image and return its detections, EigenCAM and attention layers' spatial maps.

    Args:
        model (ultralytics.YOLO): Detection model (checkpoint or YAML).
        image (numpy.ndarray): BGR image (H, W, 3), as OpenCV reads it.
        imgsz (int): Inference size (letterboxed like `yolo predict`).
        conf (float): Confidence threshold of the drawn detections.
        device (str): Torch device.

    Returns:
        (dict): 'detections' (RGB image with the boxes, masks or keypoints drawn, boxes without text labels so
            that small objects stay visible), 'count' (number of detections: boxes, or rotated boxes of an OBB
            model), 'classes' {class name: (count, box colour RGB 0-255)}, 'eigencam' ((H, W) in [0, 1]),
            'layers' {name: (H, W) map of the layer's weights averaged over its planes, or None without a spatial map},
            all at the original resolution, and 'strides' {name: the layer's stride} for the layers with a map.

    Example:
        >>> out = explain_image(YOLO("yolov8n-ema.yaml"), cv2.imread("bus.jpg"), imgsz=320)
        >>> sorted(out["layers"])
        ['10 EMA', '7 EMA']
    """
    import torch
    from ultralytics.utils.plotting import colors

    from .cam import eigencam
    from .maps import AttentionRecorder

    def predict():
        return model.predict(image, imgsz=imgsz, conf=conf, device=device, verbose=False)[0]

    if model.predictor is None:
        predict()  # sets the predictor up: it runs a fused copy of `model.model`, which is what gets hooked
    network = model.predictor.model.model
    with AttentionRecorder(network) as recorder:
        result = predict()
    network_input = recorder.input.clone()  # a normal tensor again, outside the predictor's inference mode
    input_shape = tuple(network_input.shape[2:])
    cam = eigencam(network, network_input)
    layers = {
        name: None if maps is None else _to_image(maps[0].mean(0, keepdim=True), input_shape, image.shape)[0]
        for name, maps in recorder.maps.items()
    }
    boxes = result.obb if result.boxes is None else result.boxes  # OBB models fill `obb`, the others `boxes`
    classes = {}
    for c in boxes.cls.int().tolist():
        classes[result.names[c]] = (classes.get(result.names[c], (0,))[0] + 1, colors(c))
    return {
        "detections": result.plot(labels=False, conf=False, line_width=max(1, round(sum(image.shape[:2]) / 1000)))[
            ..., ::-1
        ],
        "count": len(boxes),
        "classes": dict(sorted(classes.items(), key=lambda kv: -kv[1][0])),
        "strides": {name: input_shape[0] // maps.shape[-2] for name, maps in recorder.maps.items() if maps is not None},
        "eigencam": _to_image(torch.from_numpy(cam), input_shape, image.shape)[0],
        "layers": layers,
    }


def _overlay(fig, ax, rgb, heat, title, colorbar_label):
    ax.imshow(rgb)
    shown = ax.imshow(heat, cmap="jet", alpha=0.5, vmin=float(heat.min()), vmax=float(heat.max()) + 1e-12)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, format="%.4g").set_label(colorbar_label, fontsize=7)
    ax.set_title(title, fontsize=8)


def _note(ax, rgb, title, text):
    ax.imshow(rgb, alpha=0.35)
    ax.text(rgb.shape[1] / 2, rgb.shape[0] / 2, text, ha="center", va="center", fontsize=8, wrap=True)
    ax.set_title(title, fontsize=8)


def _panels(model_name, rgb, result):
    """[(file stem, draw(fig, ax))]: the model's EigenCAM, then each attention layer."""
    from .maps import NO_SPATIAL_MAP

    def cam(fig, ax):
        _overlay(fig, ax, rgb, result["eigencam"], f"{model_name}: EigenCAM (P3-P5)", "EigenCAM")

    def layer(name, heat):
        title, kind = f"{model_name}: layer {name}", name.split()[1]
        if heat is None:
            return lambda fig, ax: _note(ax, rgb, title, NO_SPATIAL_MAP[kind])
        title += f", stride {result['strides'][name]}"
        return lambda fig, ax: _overlay(fig, ax, rgb, heat, title, "weight (sigmoid)")

    return [("eigencam", cam)] + [(_layer_file(name), layer(name, heat)) for name, heat in result["layers"].items()]


def _layer_file(name):
    """File stem of layer `name` (`maps.attention_layers`): '7 EMA' -> 'layer07-EMA', an in-block layer
    '2.m.0.attn EMA' -> 'layer02.m.0.attn-EMA'."""
    where, kind = name.split()
    row, dot, inside = where.partition(".")
    return f"layer{int(row):02d}{dot}{inside}-{kind}" if row.isdigit() else f"layer-{where}-{kind}"


def _draw_detections(fig, ax, model_name, result):
    """The detections panel: boxes in class colours, a legend of the 8 most frequent classes and counts below."""
    from matplotlib.patches import Patch

    ax.imshow(result["detections"])
    ax.set_title(f"{model_name}: {result['count']} detections", fontsize=8)
    if result["classes"]:
        handles = [Patch(color=np.array(c) / 255, label=f"{name} {n}") for name, (n, c) in result["classes"].items()]
        ax.legend(handles=handles[:8], loc="upper center", bbox_to_anchor=(0.5, 0), ncol=min(4, len(handles)),
                  fontsize=7, frameon=False, handlelength=1)


def write_attention(out, stem, rgb, explained, dpi=100):
    """Write one image's per-layer PNGs, EigenCAMs and sheet under `out` (see the module docstring for the layout).

    Args:
        out (Path): Output folder.
        stem (str): Image file stem.
        rgb (numpy.ndarray): The image, RGB (H, W, 3).
        explained (dict): {model name: `explain_image` result}, in the sheet's column order.
        dpi (int): Resolution of the PNGs.

    Returns:
        (list[Path]): The files written.
    """
    from matplotlib.figure import Figure

    from .maps import ATTENTION_NAMES

    width = 4.2  # inches per panel
    height = (width - 0.9) * rgb.shape[0] / rgb.shape[1] + 0.5  # the image beside its colour bar, and the title
    panels = {name: _panels(name, rgb, result) for name, result in explained.items()}
    written = []
    for model_name, model_panels in panels.items():
        (out / stem / model_name).mkdir(parents=True)
        for file_stem, draw in model_panels:
            fig = Figure(figsize=(width, height), layout="constrained")
            ax = fig.add_subplot()
            draw(fig, ax)
            ax.axis("off")
            written.append(out / stem / model_name / f"{file_stem}.png")
            fig.savefig(written[-1], dpi=dpi)

    # One model: its panels in a near-square grid. Several: side by side, one column per model, one row per panel.
    columns = [[functools.partial(_draw_detections, model_name=name, result=explained[name])]
               + [draw for _, draw in model_panels] for name, model_panels in panels.items()]  # fmt: skip
    if len(columns) == 1:
        cols = int(np.ceil(np.sqrt(len(columns[0]))))
        rows = int(np.ceil(len(columns[0]) / cols))
        cells = [(i // cols, i % cols, draw) for i, draw in enumerate(columns[0])]
    else:
        cols, rows = len(columns), max(len(draws) for draws in columns)
        cells = [(row, col, draw) for col, draws in enumerate(columns) for row, draw in enumerate(draws)]
        cells += [(2, col, lambda fig, ax, n=name: _note(ax, rgb, n, f"no attention layer ({', '.join(ATTENTION_NAMES)})"))
                  for col, name in enumerate(panels) if len(columns[col]) == 2 and rows > 2]  # fmt: skip
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for row, col, draw in cells:
        draw(fig, axes[row, col])
    for ax in axes.flat:
        ax.axis("off")
    written.append(out / f"{stem}-sheet.png")
    fig.savefig(written[-1], dpi=dpi)
    return written


def main(argv=None):
    """Command line."""
    from ..data.output import ConversionError, atomic_dir

    parser = argparse.ArgumentParser(prog="ema-yolo attention", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="checkpoint or model YAML; repeat to compare models side by side (e.g. baseline and EMA)")
    parser.add_argument("--source", required=True, help="an image, or a folder of images")
    parser.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--imgsz", type=int, default=640, help="inference size (px)")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold of the drawn detections")
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA index such as 0")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT once the new one is complete")
    args = parser.parse_args(argv)
    from ultralytics.utils import TQDM

    try:
        if importlib.util.find_spec("pytorch_grad_cam") is None:
            raise VizError("EigenCAM needs pytorch-grad-cam: pip install 'ema-yolo[viz]'")
        if Path(args.out).exists() and not args.overwrite:
            raise VizError(f"{args.out}: already exists (pass --overwrite to replace it)")
        images = _read_images(args.source)
        models = _load_models(args.model)
        print(f"attention: {len(images)} image(s) x {len(models)} model(s) at imgsz {args.imgsz}; each model's "
              "first image also sets it up (tens of seconds on a CPU)", file=sys.stderr)
        with atomic_dir(args.out, args.overwrite) as tmp, TQDM(
            total=len(images) * (len(models) + 1), desc="attention", file=sys.stderr
        ) as progress:  # one step per model and image, one per sheet
            count = 0
            for path, image in images:
                explained = {}
                for name, model in models:
                    progress.set_description(f"attention {path.name}: {name}")
                    explained[name] = explain_image(model, image, args.imgsz, args.conf, args.device)
                    progress.update()
                progress.set_description(f"attention {path.name}: writing PNGs")
                count += len(write_attention(tmp, path.stem, np.ascontiguousarray(image[..., ::-1]), explained))
                progress.update()
    except (VizError, ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {count} PNGs for {len(images)} image(s) x {len(models)} model(s)", file=sys.stderr)
    return 0
