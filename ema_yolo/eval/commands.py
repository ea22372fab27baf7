"""`ema-yolo eval`: score a model or a predictions file on a dataset split under the COCO or VisDrone protocol."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_format import HelpFormatter
from ..models import ModelError, open_model
from .predictions import model_predictions
from .protocols import EvalError, evaluate, format_table, load_ground_truth, match_classes
from .results import read_visdrone_results, save_results

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    """`ema-yolo eval`."""
    parser = argparse.ArgumentParser(prog="ema-yolo eval", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="Ultralytics dataset YAML")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint, model YAML or exported model (classes matched to the data's by name)")
    source.add_argument("--predictions", help="predictions JSON as written by `yolo val save_json=True`")
    source.add_argument("--visdrone-results", help="folder of VisDrone2019-DET result files (<image stem>.txt)")
    parser.add_argument("--protocol", choices=["coco", "visdrone"], default="coco",
                        help="coco: pycocotools COCOeval; visdrone: the VisDrone2019-DET toolkit's rules")
    parser.add_argument("--split", default="val", help="dataset split to score")
    parser.add_argument("--imgsz", type=int, default=640, help="inference size (--model)")
    parser.add_argument("--device", default=None, help="inference device, e.g. cpu or 0 (--model; default: Ultralytics' choice)")
    parser.add_argument("--json", help="write metrics as JSON to this file ('-' = stdout, then nothing else there)")
    parser.add_argument("--save-visdrone", metavar="DIR", help="also write the detections as VisDrone result files")
    parser.add_argument("--save-coco", metavar="FILE", help="also write them as a COCO results JSON, original ids")
    args = parser.parse_args(argv)
    classes = None
    try:
        gt = load_ground_truth(args.data, args.split)
        if args.predictions:
            try:
                predictions = json.loads(Path(args.predictions).read_text())
            except FileNotFoundError:
                raise EvalError(f"{args.predictions}: no such file") from None
            except json.JSONDecodeError as e:
                raise EvalError(f"{args.predictions}:{e.lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(predictions, list):
                raise EvalError(f"{args.predictions}: expected a JSON list of detections")
        elif args.visdrone_results:
            predictions = read_visdrone_results(args.visdrone_results, gt)
        else:
            net = open_model(args.model)
            missing = match_classes(net.names, gt)[1]
            if missing:
                classes = [n for n in gt.names.values() if n not in missing]
                print(f"{len(missing)} dataset classes the model does not have, left out of the means: "
                      f"{', '.join(missing)}", file=sys.stderr)
            predictions = model_predictions(net, args.data, args.protocol, args.imgsz, args.split, args.device, gt=gt)
        metrics = evaluate(gt, predictions, args.protocol, args.predictions or args.visdrone_results or args.model,
                           classes, in_file_order=bool(args.visdrone_results))
        saved = save_results(gt, predictions, args.data, args.split, args.save_visdrone, args.save_coco)
    except (EvalError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(metrics, args.protocol), file=sys.stderr if args.json == "-" else sys.stdout)
    for line in saved:
        print(line, file=sys.stderr)
    if args.json == "-":
        print(json.dumps(metrics, indent=2))
    elif args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0
