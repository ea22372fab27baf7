"""`ema-yolo eval`: score a model or a predictions file on a dataset split under the COCO or VisDrone protocol."""

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from ..models import ModelError, open_model
from .protocols import EvalError, evaluate, load_ground_truth
from .results import read_visdrone_results, save_results


@contextlib.contextmanager
def _ultralytics_logs_to_stderr():
    """Keep stdout for our own output (`--json -`): Ultralytics' logger and progress bars write there otherwise."""
    from ultralytics.utils import LOGGER

    streams = [(h, h.setStream(sys.stderr)) for h in LOGGER.handlers if hasattr(h, "setStream")]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, old in streams:
            handler.setStream(old)


def model_predictions(model, data, protocol="coco", imgsz=640, split="val", device=None, batch=16):
    """Run `model` over the split with Ultralytics' validator and return its `save_json` predictions ([] for none)."""
    with tempfile.TemporaryDirectory() as tmp, _ultralytics_logs_to_stderr():
        open_model(model).val(
            data=str(data), split=split, imgsz=imgsz, batch=batch, device=device, save_json=True, plots=False,
            conf=0.001, max_det=500 if protocol == "visdrone" else 300, project=tmp, name="val", verbose=False,
        )
        saved = Path(tmp) / "val" / "predictions.json"
        return json.loads(saved.read_text()) if saved.is_file() else []  # Ultralytics writes none for no detection


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
    parser = argparse.ArgumentParser(prog="ema-yolo eval", description=__doc__)
    parser.add_argument("--data", required=True, help="Ultralytics dataset YAML")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint, model YAML or exported model")
    source.add_argument("--predictions", help="predictions JSON as written by `yolo val save_json=True`")
    source.add_argument("--visdrone-results", help="folder of VisDrone2019-DET result files (<image stem>.txt)")
    parser.add_argument("--protocol", choices=["coco", "visdrone"], default="coco")
    parser.add_argument("--split", default="val")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", help="write metrics as JSON to this file ('-' = stdout, then nothing else there)")
    parser.add_argument("--save-visdrone", metavar="DIR", help="also write the detections as VisDrone result files")
    parser.add_argument("--save-coco", metavar="FILE", help="also write them as a COCO results JSON, original ids")
    args = parser.parse_args(argv)
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
            predictions = model_predictions(args.model, args.data, args.protocol, args.imgsz, args.split, args.device)
        metrics = evaluate(gt, predictions, args.protocol, args.predictions or args.visdrone_results or args.model)
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
