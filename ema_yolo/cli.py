"""`ema-yolo` command line: one table of sub-commands, each parsed and handled in its package's `commands` module."""

from __future__ import annotations

import importlib
import sys

__all__ = ("COMMANDS", "main")

# name -> (module, handler, one line of help); a handler takes the arguments after the name and returns the exit code
COMMANDS = {
    "demo": ("ema_yolo.commands", "demo",
             "train, validate and predict with a yolov8n-ema on a generated set, offline, and write a report"),
    "convert": ("ema_yolo.data.commands", "convert",
                "prepare a YOLO dataset from VisDrone2019-DET folders/archives or a COCO JSON (`ema-yolo convert -h`)"),
    "synth": ("ema_yolo.data.commands", "synth", "write a small generated dataset in VisDrone, COCO or YOLO format"),
    "eval": ("ema_yolo.eval.commands", "main",
             "score a model or predictions file under the COCO or VisDrone protocol (`ema-yolo eval -h`)"),
    "compare": ("ema_yolo.ablation.commands", "main",
                "train and evaluate baseline vs attention variants fairly; tables and plots (`ema-yolo compare -h`)"),
    "video": ("ema_yolo.video.commands", "main", "run a model over a video and write an annotated video (`ema-yolo video -h`)"),
    "attention": ("ema_yolo.viz.commands", "main",
                  "picture each attention layer's spatial weights and EigenCAM, models side by side (`ema-yolo attention -h`)"),
    "check-exports": ("ema_yolo.export.commands", "main",
                      "export to every Ultralytics format that runs here, compare with PyTorch (`ema-yolo check-exports -h`)"),
    "check-device": ("ema_yolo.commands", "check_device",
                     "EMA on a device: correct, deterministic, compiles, what it costs (`ema-yolo check-device -h`)"),
    "bench": ("ema_yolo.commands", "bench", "benchmarks: `module` (fast EMA vs the published structure), `roofline` (in "
              "read+write passes), `step` (a model's training step), `video`"),
    "yolo": ("ema_yolo.commands", "yolo", "the stock `yolo` command with ema-yolo registered, for interpreters that skip "
             ".pth files\n                 (e.g. `ema-yolo yolo train model=yolov8n-ema.yaml data=coco8.yaml`)"),
}  # fmt: skip


def usage() -> str:
    """The command list `ema-yolo -h` prints."""
    width = max(map(len, COMMANDS)) + 2
    lines = [f"  {name:<{width}}{text}" for name, (_, _, text) in COMMANDS.items()]
    return "usage: ema-yolo COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; return its exit code (2 for no or an unknown command)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"ema-yolo: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, handler, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), handler)(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
