"""Check the converters (and, given predictions, the evaluators) on real third-party data, not shipped with the project.

usage: python scripts/check_real_data.py --visdrone-sample DIR --visdrone-annotations DIR [--coco-sample DIR]
"""

import argparse
import collections
import tempfile
from pathlib import Path

from ema_yolo.data.output import Report
from ema_yolo.data.visdrone import convert_visdrone, parse_annotation


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visdrone-sample", type=Path, help="folder with images/ and annotations/")
    parser.add_argument("--visdrone-annotations", type=Path, help="folder of RAW annotation .txt files")
    args = parser.parse_args()
    if args.visdrone_annotations:
        report, categories, files = Report(), collections.Counter(), sorted(args.visdrone_annotations.glob("*.txt"))
        for f in files:
            objects, ignored = parse_annotation(f.read_text(encoding="utf-8-sig"), f, report)
            categories.update(c + 1 for c, *_ in objects)
            categories[0] += len(ignored)
        categories[11] = report.counts.get("others (category 11) not labelled", 0)
        print(f"{len(files)} annotation files: {sum(categories.values())} boxes, categories {dict(sorted(categories.items()))}, "
              f"problems {len(report.problems)}")
    if args.visdrone_sample:
        with tempfile.TemporaryDirectory() as tmp:
            report = convert_visdrone(args.visdrone_sample, Path(tmp) / "out")
            print(f"{args.visdrone_sample}: {report.summary()}")
            for label in sorted((Path(tmp) / "out" / "labels").glob("*.txt")):
                rows = [list(map(float, r.split()[1:])) for r in label.read_text().splitlines()]
                inside = all(0 <= cx - w / 2 + 2e-6 and cx + w / 2 <= 1 + 2e-6 and 0 <= cy - h / 2 + 2e-6 and cy + h / 2 <= 1 + 2e-6 for cx, cy, w, h in rows)
                print(f"  {label.name}: {len(rows)} labels, all inside the image: {inside}")


if __name__ == "__main__":
    main()
