"""`ema-yolo convert` and `ema-yolo synth` command lines."""

import argparse
import sys

from ..cli_format import HelpFormatter
from .output import ConversionError


def convert(argv=None):
    """`ema-yolo convert {visdrone SRC DST | coco ANNOTATIONS_JSON IMAGES_DIR DST} [--overwrite]`."""
    parser = argparse.ArgumentParser(prog="ema-yolo convert", description="Prepare a YOLO dataset from original files.",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    visdrone = sub.add_parser("visdrone", help="VisDrone2019-DET split folder(s) or .zip archive(s)",
                              formatter_class=HelpFormatter)
    visdrone.add_argument("src", help="split folder, folder of VisDrone2019-DET-* folders and/or .zip files, or one .zip")
    visdrone.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    coco = sub.add_parser("coco", help="COCO instances JSON + image folder", formatter_class=HelpFormatter)
    coco.add_argument("annotations", help="instances JSON, e.g. annotations/instances_val2017.json")
    coco.add_argument("images", help="folder of the JSON's images, e.g. val2017/")
    coco.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    coco.add_argument("--mapping", choices=["auto", "coco80", "custom"], default="auto",
                      help="category ids -> classes: coco80 (standard 91->80), custom (ascending ids), auto (coco80 for "
                      "exactly the standard 80 ids)")
    for p in (visdrone, coco):
        p.add_argument("--overwrite", action="store_true", help="replace DST once the new one is complete")
    args = parser.parse_args(argv)
    try:
        if args.format == "visdrone":
            from .visdrone import convert_visdrone

            report = convert_visdrone(args.src, args.dst, args.overwrite)
        else:
            from .coco import convert_coco

            report = convert_coco(args.annotations, args.images, args.dst, args.mapping, args.overwrite)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.dst}: {report.summary()}; dataset YAML: {args.dst}/data.yaml")
    return 0


def synth(argv=None):
    """`ema-yolo synth {visdrone,coco,yolo,segment,pose,obb,classify} DST [--images N] [--seed S]`."""
    parser = argparse.ArgumentParser(prog="ema-yolo synth", description="Write a small generated dataset in a raw format.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("format", choices=["visdrone", "coco", "yolo", "segment", "pose", "obb", "classify"],
                        help="raw VisDrone/COCO, or a YOLO-layout set for Ultralytics' detect (yolo), segment, ... task")
    parser.add_argument("dst", help="output folder (new or empty)")
    parser.add_argument("--images", type=int, default=32, help="number of images (YOLO layouts: training images)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    from pathlib import Path

    from . import synth

    if Path(args.dst).exists() and any(Path(args.dst).iterdir()):  # never mix a new set into an old one
        print(f"error: {args.dst}: already exists and is not empty", file=sys.stderr)
        return 1
    if args.format == "visdrone":
        synth.make_visdrone_raw(args.dst, args.images, args.seed)
    elif args.format == "coco":
        synth.make_coco_raw(args.dst, args.images, args.seed)
    elif args.format == "yolo":
        synth.make_yolo_dataset(args.dst, train=args.images, val=max(args.images // 4, 1), seed=args.seed)
    else:
        synth.make_task_dataset(args.dst, args.format, train=args.images, val=max(args.images // 4, 1), seed=args.seed)
    print(f"wrote {args.format} dataset to {args.dst}")
    return 0
