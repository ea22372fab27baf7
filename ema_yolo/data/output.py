"""What every converter shares: an output folder that appears only when complete, a problem report, label rows."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ("ConversionError", "Report", "atomic_dir", "box_to_yolo", "dataset_yaml", "place_image")


class ConversionError(Exception):
    """A problem that stops a conversion (its message names the file)."""


class Report:
    """Collects per-file problems (one line each, with file and line) and counts what was converted or dropped."""

    def __init__(self):
        self.problems, self.counts = [], {}

    def problem(self, path: str | Path, message: str, line: int | None = None) -> None:
        """Record a problem in `path` (at `line`, 1-based) and print it to stderr."""
        where = f"{path}:{line}" if line is not None else str(path)
        self.problems.append(f"{where}: {message}")
        print(f"warning: {where}: {message}", file=sys.stderr)

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to counter `key`."""
        self.counts[key] = self.counts.get(key, 0) + n

    def summary(self) -> str:
        """One line with every counter and the number of problems."""
        parts = [f"{k} {v}" for k, v in sorted(self.counts.items())]
        return ", ".join(parts + [f"problems {len(self.problems)}"])


@contextlib.contextmanager
def atomic_dir(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `dst` that becomes `dst` only if the block finishes.

    An interrupted or failed conversion leaves no `dst` (and no half-written folder under that name).

    Raises:
        ConversionError: If `dst` exists and `overwrite` is False.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
            dst.rename(old)
            tmp.rename(dst)
            shutil.rmtree(old)
        else:
            tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def place_image(src: str | Path, dst: str | Path, data: bytes | None = None) -> None:
    """Put an image at `dst` without re-encoding: a hard link to `src` where possible, else a byte copy.

    Args:
        src (Path | None): Source file (None when the bytes come from an archive).
        dst (Path): Destination path.
        data (bytes, optional): The image bytes, when read from an archive.
    """
    if data is not None:
        dst.write_bytes(data)
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def box_to_yolo(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Clip pixel box (left, top, width, height) to the image; return normalised (cx, cy, w, h) or None if empty."""
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)


def dataset_yaml(root: str | Path, splits: dict[str, str], names: list[str] | dict[int, str]) -> Path:
    """Return the text of an Ultralytics dataset YAML for `splits` (a dict split -> images folder, relative)."""
    train = splits.get("train", next(iter(splits.values())))
    val = splits.get("val", train)
    lines = [f"path: {Path(root).resolve()}", f"train: {train}", f"val: {val}"]
    if "test-dev" in splits or "test" in splits:
        lines.append(f"test: {splits.get('test-dev', splits.get('test'))}")
    lines += ["names:"] + [f"  {i}: {n}" for i, n in enumerate(names)]
    return "\n".join(lines) + "\n"
