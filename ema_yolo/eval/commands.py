"""`ema-yolo eval`: score a model or a predictions file on a dataset split under the COCO or VisDrone protocol."""

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from ..cli import HelpFormatter
from ..models import ModelError, open_model
from .protocols import EvalError, evaluate, load_ground_truth, match_classes
from .results import read_visdrone_results, save_results


@contextlib.contextmanager
def _quiet_ultralytics():
    """Keep stdout for our own output (`--json -`), and of Ultralytics' validator only its progress bar (on stderr).

    Its log lines are not this command's: its own metrics table, "Results saved to" a folder deleted afterwards, its
    label warnings (`load_ground_truth` prints them) and "Skipping labels" (classes are matched by name here). A
    filter, not the log level, drops them: the level also switches its progress bar off.
    """
    import logging

    from ultralytics.utils import LOGGER

    def errors_only(record):
        return record.levelno >= logging.ERROR

    LOGGER.addFilter(errors_only)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        LOGGER.removeFilter(errors_only)


def model_predictions(model, data, protocol="coco", imgsz=640, split="val", device=None, batch=16, gt=None):
    """Run `model` over the split with Ultralytics' validator and return its `save_json` predictions ([] for none).

    With `gt` (the split's `GroundTruth`), the model's classes are matched to the dataset's by name
    (`protocols.match_classes`): detections get the dataset's category ids, those of classes the dataset lacks are
    left out.

    Args:
        model (str | Path | ultralytics.YOLO): Checkpoint, model YAML, exported model, or a loaded model.

    Raises:
        EvalError: If no class name of the model is one of the dataset's.
        ema_yolo.models.ModelError: If the model cannot be loaded.
    """
    from ultralytics import YOLO
    from ultralytics.data.converter import coco80_to_coco91_class

    net = model if isinstance(model, YOLO) else open_model(model)
    mapping = match_classes(net.names, gt)[0] if gt is not None else None
    base = net._smart_load("validator")

    class Validator(base):
        def eval_json(self, stats):  # scored by our protocols: no faster-coco-eval (nor its pip AutoUpdate)
            return stats

    with tempfile.TemporaryDirectory() as tmp, _quiet_ultralytics():
        net.val(
            validator=Validator, data=str(data), split=split, imgsz=imgsz, batch=batch, device=device, save_json=True,
            plots=False, conf=0.001, max_det=500 if protocol == "visdrone" else 300, project=tmp, name="val",
            verbose=False,
        )
        saved = Path(tmp) / "val" / "predictions.json"
        predictions = json.loads(saved.read_text()) if saved.is_file() else []  # none written for no detection
    if mapping is not None:  # the validator's class_map: model class index -> category_id it wrote
        class_map = coco80_to_coco91_class() if gt.category_ids == coco80_to_coco91_class() else range(1, len(net.names) + 1)
        model_class = {category: i for i, category in enumerate(class_map)}
        predictions = [{**p, "category_id": mapping[model_class[p["category_id"]]]} for p in predictions
                       if model_class[p["category_id"]] in mapping]
    return predictions


def format_metric(value):
    """A metric as printed: four decimals, or 'n/a' where it is undefined (None, see `protocols.evaluate`)."""
    return "n/a" if value is None else f"{value:.4f}"


def format_table(metrics, protocol):
    """A terminal table of the summary metrics and per-class AP."""
    lines = [f"{protocol} protocol", "-" * 28]
    lines += [f"{k:<10}{format_metric(v):>10}" for k, v in metrics.items() if k != "per_class"]
    lines += ["-" * 28, "per-class AP"] + [f"{n:<18}{format_metric(ap):>10}" for n, ap in metrics["per_class"].items()]
    return "\n".join(lines)


def main(argv=None):
    """Command line."""
    parser = argparse.ArgumentParser(prog="ema-yolo eval", description=__doc__,
                                     formatter_class=HelpFormatter)
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
