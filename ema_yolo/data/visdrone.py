"""VisDrone2019-DET RAW annotations -> YOLO labels, from split folders or the original .zip archives.

RAW line: `bbox_left,bbox_top,bbox_width,bbox_height,score,object_category,truncation,occlusion` (pixels).
Categories 1-10 (pedestrian ... motor) become classes 0-9. Category 0 (ignored region) is written to the side file
`ignored/<stem>.txt` (one `left top width height` pixel box per line, for the VisDrone evaluation rules), category 11
(others) is not a label. Boxes are clipped to the image; boxes empty after clipping are dropped and counted.
Images are hard-linked where possible, else copied (from an archive: its bytes written as they are), never re-encoded.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

from PIL import Image

from .output import ConversionError, Report, atomic_dir, box_to_yolo, dataset_yaml, place_image

__all__ = ("NAMES", "convert_visdrone", "parse_annotation")

NAMES = ("pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_annotation(text: str, path: str | Path, report: Report) -> tuple[list, list]:
    """Parse RAW VisDrone annotation text.

    Args:
        text (str): File contents (CRLF, blank lines, trailing commas and a missing final newline are fine).
        path (str | Path): File name for messages.
        report (Report): Receives one problem per bad line; bad lines are skipped, good ones kept.

    Returns:
        (tuple[list, list]): Objects as (class 0-9, left, top, width, height) and ignored regions as
            (left, top, width, height), in pixels.
    """
    objects, ignored = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if fields[-1] == "":
            fields.pop()  # trailing comma
        if len(fields) != 8:
            report.problem(path, f"expected 8 comma-separated fields, got {len(fields)}: {line!r}", number)
            continue
        try:
            left, top, width, height, _score, category, _truncation, _occlusion = (int(f) for f in fields)
        except ValueError:
            report.problem(path, f"non-integer field: {line!r}", number)
            continue
        if width < 0 or height < 0:
            report.problem(path, f"negative box size: {line!r}", number)
        elif not 0 <= category <= 11:
            report.problem(path, f"unknown object_category {category}: {line!r}", number)
        elif category == 0:
            ignored.append((left, top, width, height))
        elif category == 11:
            report.count("others (category 11) not labelled")
        else:
            objects.append((category - 1, left, top, width, height))
    return objects, ignored


class _Split:
    """One split's annotation and image files, from a folder or a zip archive, matched by file stem."""

    def __init__(self, name, annotations, images, archive=None):
        self.name, self.annotations, self.images, self.archive = name, annotations, images, archive

    @classmethod
    def from_folder(cls, folder):
        annotations = {p.stem: p for p in (folder / "annotations").glob("*.txt")}
        images = {p.stem: p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        return cls(_split_name(folder.name), annotations, images)

    @classmethod
    def from_zip(cls, path):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ConversionError(f"{path}: not a readable zip archive ({e})") from None
        splits = {}
        for member in archive.namelist():
            parts = Path(member).parts
            if len(parts) >= 2 and parts[-2] in {"annotations", "images"}:
                root = parts[-3] if len(parts) >= 3 else Path(path).stem
                split = splits.setdefault(root, cls(_split_name(root), {}, {}, archive))
                stem, suffix = Path(member).stem, Path(member).suffix.lower()
                if parts[-2] == "annotations" and suffix == ".txt":
                    split.annotations[stem] = member
                elif parts[-2] == "images" and suffix in IMAGE_SUFFIXES:
                    split.images[stem] = member
        if not splits:
            raise ConversionError(f"{path}: no images/ or annotations/ folders inside the archive")
        return list(splits.values())

    def read(self, member):
        """Return the bytes of a file of this split."""
        if self.archive is not None:
            return self.archive.read(member)
        return Path(member).read_bytes()

    def where(self, member):
        return f"{self.archive.filename}:{member}" if self.archive is not None else str(member)


def _split_name(folder_name):
    """'VisDrone2019-DET-test-dev' -> 'test-dev'; other names are kept."""
    match = re.match(r"VisDrone2019-DET-(.+)$", folder_name)
    return match.group(1) if match else folder_name


def _find_splits(src, report):
    """Return the splits under `src`: a split folder, a folder of split folders and/or zips, or one zip.

    An unreadable archive inside a folder is reported and skipped; `src` itself unreadable is an error.
    """
    src = Path(src)
    if not src.exists():
        raise ConversionError(f"{src}: no such file or folder")
    if src.is_file():
        if src.suffix.lower() != ".zip":
            raise ConversionError(f"{src}: expected a folder or a .zip archive")
        return _Split.from_zip(src)
    if (src / "annotations").is_dir() and (src / "images").is_dir():
        return [_Split.from_folder(src)]
    splits = []
    for child in sorted(src.iterdir()):
        if child.is_dir() and (child / "annotations").is_dir() and (child / "images").is_dir():
            splits.append(_Split.from_folder(child))
        elif child.suffix.lower() == ".zip":
            try:
                splits.extend(_Split.from_zip(child))
            except ConversionError as e:
                report.problem(child, str(e).removeprefix(f"{child}: "))
    if not splits:
        raise ConversionError(f"{src}: no VisDrone split (images/ + annotations/) or .zip archive found")
    return splits


def _convert_split(split, out, report):
    """Write images/, labels/ and ignored/ of one split under `out`."""
    from ultralytics.utils import TQDM

    for sub in ("images", "labels", "ignored"):
        (out / sub).mkdir(parents=True)
    for stem in sorted(set(split.images) - set(split.annotations)):
        report.problem(split.where(split.images[stem]), "image without an annotation file; skipped")
    for stem in TQDM(sorted(split.annotations), desc=f"VisDrone {split.name}"):
        annotation = split.annotations[stem]
        if stem not in split.images:
            report.problem(split.where(annotation), "annotation without an image; skipped")
            continue
        image = split.images[stem]
        try:
            data = split.read(image) if split.archive is not None else None
            with Image.open(io.BytesIO(data) if data is not None else image) as im:
                width, height = im.size
                im.verify()
        except Exception as e:  # noqa: BLE001 - any decoder error means an unreadable image
            report.problem(split.where(image), f"unreadable image ({type(e).__name__}); skipped")
            continue
        try:
            text = split.read(annotation).decode("utf-8-sig")
        except (UnicodeDecodeError, zipfile.BadZipFile, OSError) as e:
            report.problem(split.where(annotation), f"unreadable annotation ({type(e).__name__}); skipped")
            continue
        objects, ignored = parse_annotation(text, split.where(annotation), report)
        rows = []
        for cls, *box in objects:
            yolo = box_to_yolo(*box, width, height)
            if yolo is None:
                report.count("boxes empty after clipping")
                continue
            rows.append(f"{cls} " + " ".join(f"{v:.6f}" for v in yolo))
        report.count("boxes", len(rows))
        report.count("ignored regions", len(ignored))
        suffix = Path(str(image)).suffix
        place_image(None if data is not None else image, out / "images" / f"{stem}{suffix}", data)
        (out / "labels" / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
        if ignored:
            (out / "ignored" / f"{stem}.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in ignored))
        report.count("images")


def convert_visdrone(src: str | Path, dst: str | Path, overwrite: bool = False) -> Report:
    """Convert VisDrone2019-DET from `src` (split folder, folder of splits and/or zips, or one zip) into `dst`.

    Returns:
        (Report): Counts and problems; the dataset YAML is `dst/data.yaml`.

    Raises:
        ConversionError: If `src` holds no readable split or `dst` exists (without `overwrite`).
    """
    report = Report()
    splits = _find_splits(src, report)
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise ConversionError(f"{src}: more than one source for split(s) {sorted({n for n in names if names.count(n) > 1})}")
    with atomic_dir(dst, overwrite) as tmp:
        single = len(splits) == 1
        for split in splits:
            _convert_split(split, tmp if single else tmp / split.name, report)
        folders = {s.name: "images" if single else f"{s.name}/images" for s in splits}
        (tmp / "data.yaml").write_text(dataset_yaml(dst, folders, NAMES))
        if not report.counts.get("images"):
            raise ConversionError(f"{src}: no image could be converted")
    return report
