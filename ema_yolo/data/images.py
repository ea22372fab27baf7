"""The image files a path names, as Ultralytics reads them: one helper for every command that takes images."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ("image_files",)


def image_files(source: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = False,
                lists: bool = False) -> list[Path]:
    """Return the image files of `source`, in order: each folder's images sorted by path.

    Args:
        source (str | Path | list): A file, a folder, or a list of either. A folder gives its files with an image
            suffix of Ultralytics' `IMG_FORMATS` (case-insensitive); a file is taken as it is.
        recursive (bool): Also search the folders' sub-folders (as Ultralytics reads a dataset split).
        lists (bool): Read a file as a list of image paths, one a line, a `./` path relative to the list's folder
            (Ultralytics' `.txt` split lists).

    Returns:
        (list[Path]): The files; empty if the folders hold no images.

    Raises:
        FileNotFoundError: Naming (`.filename`) the first entry of `source` that does not exist.

    Example:
        >>> image_files(Path(ultralytics.utils.ASSETS))[0].name
        'bus.jpg'
    """
    from ultralytics.data.utils import IMG_FORMATS

    files = []
    for entry in map(Path, [source] if isinstance(source, (str, os.PathLike)) else source):
        if entry.is_dir():
            found = entry.rglob("*") if recursive else entry.iterdir()
            files += sorted(p for p in found if p.suffix[1:].lower() in IMG_FORMATS)
        elif entry.is_file() and lists:
            lines = [line.strip() for line in entry.read_text().splitlines() if line.strip()]
            files += [entry.parent / line if line.startswith("./") else Path(line) for line in lines]
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(2, "no such file or folder", str(entry))
    return files
