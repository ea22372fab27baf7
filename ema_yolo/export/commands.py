"""`ema-yolo check-exports`: its parser and handler (the cases themselves: `ema_yolo.export.check`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_format import HelpFormatter
from ..data.images import image_files
from . import check
from .check import CASES, UNAVAILABLE, checkpoint_of, report, run_cases

__all__ = ("main",)


def main(argv: list[str] | None = None) -> int:
    """`ema-yolo check-exports IMAGES... [--model M] [--baseline B] [--data D] [--formats a,b] [--imgsz N]`."""
    all_cases = [*CASES, *UNAVAILABLE]
    parser = argparse.ArgumentParser(prog="ema-yolo check-exports", description=check.__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("images", nargs="+", help="image files or folders to compare outputs on")
    parser.add_argument("--model", default="yolov8n-ema.yaml", help="checkpoint or model YAML (random weights)")
    parser.add_argument("--baseline", help="checkpoint or YAML timed side by side in each format, e.g. yolov8n.yaml")
    parser.add_argument("--data", help="dataset YAML: int8 calibration images (its val split) and --val")
    parser.add_argument("--val", action="store_true", help="also measure each export's mAP50-95 on --data")
    parser.add_argument("--formats", default=",".join(all_cases), help=f"comma-separated cases ({', '.join(all_cases)})")
    parser.add_argument("--imgsz", type=int, default=640, help="export size")
    parser.add_argument("--second-size", type=int, help="another size for dynamic exports (default imgsz / 2)")
    parser.add_argument("--conf", type=float, default=0.25, help="NMS confidence for the box comparison")
    parser.add_argument("--out", default="runs/check-exports", help="output folder (results.md, results.json)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one case may take")
    args = parser.parse_args(argv)
    if args.val and not args.data:
        parser.error("--val needs --data")
    names = [n.strip() for n in args.formats.split(",") if n.strip()]
    if unknown := [n for n in names if n not in all_cases]:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(all_cases)}")
    try:
        images = [str(f.resolve()) for f in image_files(args.images)]
        if not images:
            raise FileNotFoundError(f"no images in {', '.join(map(str, args.images))}")
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        spec = {
            "model": checkpoint_of(args.model, out),
            "baseline": checkpoint_of(args.baseline, out) if args.baseline else None,
            "images": images,
            "imgsz": args.imgsz,
            "data": str(Path(args.data).resolve()) if args.data else None,
            "val": args.val,
            "second_size": args.second_size or max(32, args.imgsz // 64 * 32),
            "conf": args.conf,
        }
    except FileNotFoundError as e:
        print(f"ema-yolo check-exports: {f'{e.filename}: {e.strerror}' if e.filename else e}", file=sys.stderr)
        return 2
    rows = run_cases(names, spec, out, args.timeout)
    reference = next((r.get("map") for r in rows if r["case"] == "pytorch"), None)
    table = report(rows, reference)
    (out / "results.json").write_text(json.dumps({"spec": spec, "rows": rows}, indent=1))
    (out / "results.md").write_text(table + "\n")
    print(table)
    return int(any(r["status"].startswith(("FAILED", "MISMATCH")) for r in rows))
