"""`ema-yolo` command line: `demo`, `bench`, and `yolo` (the stock Ultralytics command with EMA registered)."""

import argparse
import sys

USAGE = """usage: ema-yolo COMMAND [ARGS]

commands:
  demo     train, validate and predict with a yolov8n-ema on a generated set, offline, and write a report
  convert  prepare a YOLO dataset from VisDrone2019-DET folders/archives or a COCO JSON (`ema-yolo convert -h`)
  synth    write a small generated dataset in VisDrone, COCO or YOLO format
  eval     score a model or predictions file under the COCO or VisDrone protocol (`ema-yolo eval -h`)
  compare  train and evaluate baseline vs EMA/CBAM/CA/SE variants fairly; tables and plots (`ema-yolo compare -h`)
  video    run a model over a video and write an annotated video (`ema-yolo video -h`)
  attention  picture each attention layer's spatial weights and EigenCAM, models side by side (`ema-yolo attention -h`)
  check-exports  export to every Ultralytics format that runs here, compare with PyTorch (`ema-yolo check-exports -h`)
  check-device   EMA on a device: correct, deterministic, compiles, what it costs (`ema-yolo check-device -h`)
  bench    benchmarks: `module` (fast EMA vs the published structure), `roofline` (in read+write passes), `step`
           (a model's training step), `video`
  yolo     the stock `yolo` command with ema-yolo registered, for interpreters that skip .pth files
           (e.g. `ema-yolo yolo train model=yolov8n-ema.yaml data=coco8.yaml`)
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every sub-command's `-h`: each option's default where it has one (not for None, False or required options)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.required:
            return action.help
        return super()._get_help_string(action)


def main(argv=None):
    """Dispatch to a sub-command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from .demo import main as run
    elif command == "bench":
        from .bench import main as run
    elif command == "eval":
        from .eval.commands import main as run
    elif command == "compare":
        from .eval.compare import main as run
    elif command == "video":
        from .video.commands import main as run
    elif command == "attention":
        from .viz.commands import main as run
    elif command == "convert":
        from .data.commands import convert_main as run
    elif command == "synth":
        from .data.commands import synth_main as run
    elif command == "check-exports":
        from .export.check import main as run
    elif command == "check-device":
        from .check_device import main as run
    elif command == "yolo":
        import ema_yolo
        from ultralytics.cfg import entrypoint

        ema_yolo.register()
        sys.argv[:] = ["yolo", *rest]  # in place: Ultralytics kept a reference to this list at import
        return entrypoint()
    else:
        print(f"ema-yolo: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
