"""`ema-yolo check-exports`: export a model to every Ultralytics format that runs here and compare with PyTorch.

Each case (a format with its export arguments) runs in its own Python process, so a converter or runtime that
crashes (e.g. a segmentation fault in a native library) is reported as that case's failure and the others go on.
A case exports the model with Ultralytics' exporter, loads the result with Ultralytics' `AutoBackend` (what
`YOLO(exported)` predicts and validates with), and compares on real images:

- raw head outputs against the PyTorch checkpoint's (`compare.raw_error`), at the export size and, for dynamic
  exports, at a second size;
- boxes after Ultralytics' NMS (`compare.match_boxes`);
- with `--val`: mAP50-95 from `YOLO(exported).val(data=...)`, against the checkpoint's (case `pytorch`);
- with `--baseline`: per-image latency of the model and of the baseline exported the same way, timed interleaved.

A full-precision (fp32) case passes when its raw outputs differ by less than 1e-3 and every confident box has a twin
with IoU > 0.99; reduced-precision cases report their figures (their mAP change is the measure).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ("CASES", "UNAVAILABLE", "check_case", "checkpoint_of", "describe_exit", "onnx2tf_sample", "report", "run_cases")

# name -> (Ultralytics export arguments, precision). Every CPU-exportable format of Ultralytics 8.4 on Linux x86.
CASES = {
    "pytorch": ({}, "fp32"),  # the checkpoint itself: the reference mAP50-95 and latency
    "torchscript": ({"format": "torchscript"}, "fp32"),
    "onnx": ({"format": "onnx"}, "fp32"),  # simplify=True is Ultralytics' default
    "onnx-nosimplify": ({"format": "onnx", "simplify": False}, "fp32"),
    "onnx-dynamic": ({"format": "onnx", "dynamic": True}, "fp32"),
    "onnx-fp16": ({"format": "onnx", "quantize": 16}, "fp16"),
    "onnx-int8": ({"format": "onnx", "quantize": 8}, "int8"),
    "openvino": ({"format": "openvino"}, "fp32"),  # compiled with f32 inference precision, see `_openvino_f32`
    "openvino-dynamic": ({"format": "openvino", "dynamic": True}, "fp32"),
    "openvino-bf16": ({"format": "openvino"}, "bf16"),  # the runtime's default on CPUs with AVX512-BF16 or AMX
    "openvino-fp16": ({"format": "openvino", "quantize": 16}, "fp16"),
    "openvino-int8": ({"format": "openvino", "quantize": 8}, "int8"),
    "ncnn": ({"format": "ncnn"}, "fp32"),
    "ncnn-fp16": ({"format": "ncnn", "quantize": 16}, "fp16"),
    "mnn": ({"format": "mnn"}, "fp32"),
    "mnn-dynamic": ({"format": "mnn", "dynamic": True}, "fp32"),
    "mnn-fp16": ({"format": "mnn", "quantize": 16}, "fp16"),
    "mnn-int8": ({"format": "mnn", "quantize": 8}, "int8"),
    "paddle": ({"format": "paddle"}, "fp32"),
    "litert": ({"format": "litert"}, "fp32"),
    "litert-int8": ({"format": "litert", "quantize": 8}, "int8"),
    "executorch": ({"format": "executorch"}, "fp32"),
    "saved_model": ({"format": "saved_model"}, "fp32"),
    "pb": ({"format": "pb"}, "fp32"),
    "coreml": ({"format": "coreml"}, "fp32"),
}
# Formats whose runtime (and mostly converter) needs hardware or a vendor SDK this machine does not have.
UNAVAILABLE = {
    "engine": "TensorRT needs an NVIDIA GPU",
    "edgetpu": "needs Google's edgetpu_compiler (an apt package outside PyPI and Debian) and an Edge TPU",
    "imx": "needs Sony's IMX500 toolchain (Java-based converter) and the camera",
    "rknn": "Ultralytics marks it not exportable on x86 CPU; runs on Rockchip NPUs",
    "axelera": "needs the Axelera Voyager SDK and a Metis accelerator",
    "deepx": "needs the DEEPX dx_com compiler and an NPU",
    "qnn": "needs Qualcomm's QNN SDK and a Snapdragon device",
    "hailo": "needs the Hailo Dataflow Compiler and a Hailo device",
    "ascend": "needs Huawei's CANN toolkit and an Ascend NPU",
    "xilinx": "needs AMD Quark/Vitis AI and an AMD NPU",
}
CHECKS = ("coreml",)  # exported here, but predicting needs macOS: reported as exported, unmeasured
ONNX2TF_FORMATS = ("saved_model", "pb")  # Ultralytics converts these with onnx2tf
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
RAW_TOL, MIN_IOU = 1e-3, 0.99


def describe_exit(code: int | None) -> str:
    """Describe a child process's return code: 0 -> 'ok', -11 or 139 -> 'crashed (SIGSEGV)', else 'exit N'.

    Example:
        >>> describe_exit(-11), describe_exit(139), describe_exit(1)
        ('crashed (SIGSEGV)', 'crashed (SIGSEGV)', 'exit 1')
    """
    if code == 0:
        return "ok"
    number = -code if code < 0 else code - 128 if code > 128 else None
    try:
        return f"crashed ({signal.Signals(number).name})" if number else f"exit {code}"
    except ValueError:
        return f"exit {code}"


def _stage(name):
    """Announce the worker's current stage on stdout, so the parent can say where a crash happened."""
    print(f"@@stage {name}", flush=True)


def _infer(backend, images):
    """Raw head outputs of `backend` for `images`, one image at a time (static exports take batch 1)."""
    import torch

    from .compare import head_output

    with torch.no_grad():
        return torch.cat([head_output(backend(images[i : i + 1])) for i in range(len(images))])


def _latency(backends, image, rounds=5, calls=5):
    """Median seconds per call of each backend on `image`, interleaved round by round (`timing.time_calls`)."""
    from ..timing import time_calls

    samples = [[] for _ in backends]
    for r in range(rounds):
        for backend, times in zip(backends, samples):
            times += time_calls(lambda: _infer(backend, image), "cpu", calls, warmup=int(r == 0))  # noqa: B023
    return [statistics.median(t) for t in samples]


def _openvino_f32(backend, exported):
    """Recompile an OpenVINO `AutoBackend` with f32 inference precision.

    OpenVINO's CPU plugin computes in bfloat16 by default on CPUs with AVX512-BF16 or AMX (this machine's EPYC has
    AVX512-BF16), and Ultralytics asks for f32 only on Windows and ARM64, so `YOLO(exported)` runs an fp32 export
    in bf16 there: the `openvino-bf16` case measures that.
    """
    import openvino as ov

    ov_backend = backend.backend
    ov_backend.compile_model = functools.partial(
        ov_backend.compile_model, config={"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": ov.Type.f32}
    )
    ov_backend.ov_compiled_model = ov_backend.compile_model(ov.Core().read_model(next(Path(exported).glob("*.xml"))))


FULL_PRECISION = {"openvino": _openvino_f32}  # runtimes whose CPU default is not float32


def _load(exported, name):
    """`AutoBackend` of an export on the CPU, as case `name` runs it (fp32 cases in float32 arithmetic)."""
    import torch
    from ultralytics.nn.autobackend import AutoBackend

    backend = AutoBackend(exported, device=torch.device("cpu"), verbose=False)
    kwargs, precision = CASES[name]
    if precision == "fp32" and kwargs.get("format") in FULL_PRECISION:
        FULL_PRECISION[kwargs["format"]](backend, exported)
    return backend


def onnx2tf_sample(images: list[str], folder: str | Path) -> Path:
    """Write onnx2tf's calibration sample into `folder`, made from `images`, so Ultralytics does not download it.

    Ultralytics' TensorFlow exports (SavedModel, GraphDef) look for `calibration_image_sample_data_20x128x128x3_float32
    .npy` in the working directory before calling onnx2tf, and download it from GitHub when it is missing, even for
    fp32 exports, which then stop offline. The file is what onnx2tf calibrates int8 with by default: 20 RGB images,
    128 x 128, float32 in [0, 1], NHWC.

    Args:
        images (list[str]): Image files, cycled to 20 and letterboxed to 128 px (`compare.load_images`).
        folder (str | Path): Where to write the file (the export's working directory).

    Returns:
        (Path): The written file.

    Example:
        >>> onnx2tf_sample(["bus.jpg"], ".").name
        'calibration_image_sample_data_20x128x128x3_float32.npy'
    """
    import numpy as np

    from .compare import load_images

    batch = load_images([images[i % len(images)] for i in range(20)], 128)
    path = Path(folder) / ONNX2TF_SAMPLE
    np.save(path, batch.permute(0, 2, 3, 1).numpy())
    return path


def _export(checkpoint, kwargs, imgsz, data, folder):
    """Export a copy of `checkpoint` placed in `folder` (so each case writes its own files); return the path."""
    from ultralytics import YOLO

    folder.mkdir(parents=True, exist_ok=True)
    local = folder / Path(checkpoint).name
    shutil.copyfile(checkpoint, local)
    from ultralytics.engine.exporter import export_formats

    formats = export_formats()
    takes_data = "data" in formats["Arguments"][formats["Argument"].index(kwargs["format"])]
    extra = {"data": data} if kwargs.get("quantize") == 8 and takes_data else {}  # calibration; MNN int8 has none
    return YOLO(local).export(imgsz=imgsz, device="cpu", verbose=False, **kwargs, **extra)


def check_case(name: str, model: str, images: list[str], imgsz: int, out: str | Path, baseline: str | None = None,
               data: str | None = None, val: bool = False, second_size: int | None = None, conf: float = 0.25) -> dict:
    """Run one case in this process and return its result (`run_cases` calls it in a child process).

    Args:
        name (str): Key of `CASES`.
        model (str | Path): PyTorch checkpoint.
        images (list[str]): Image files to compare on.
        imgsz (int): Export size.
        out (Path): Folder for the exported files.
        baseline (str | Path, optional): Second checkpoint exported the same way, for side-by-side latency.
        data (str, optional): Dataset YAML for int8 calibration (its val images) and `val`.
        val (bool): Also measure mAP50-95 of the exported model on `data`'s val split.
        second_size (int, optional): Another size to compare dynamic exports at.
        conf (float): NMS confidence threshold for the box comparison.

    Returns:
        (dict): `sizes` (per size: raw errors and box matching), `map`, and with a baseline: `baseline` (its raw
        errors at `imgsz`), `latency_ms` / `baseline_latency_ms`.
    """
    from ultralytics import YOLO

    from .compare import load_images, match_boxes, raw_error

    kwargs, _ = CASES[name]
    out = Path(out)
    _stage("export")
    # Ultralytics looks for onnx2tf's sample in the working folder and downloads it when absent: made here, never
    # over a file that is already there, and removed after the export
    sample = Path.cwd() / ONNX2TF_SAMPLE
    made = kwargs.get("format") in ONNX2TF_FORMATS and not sample.exists()
    if made:
        onnx2tf_sample(images, Path.cwd())
    try:
        exported = _export(model, kwargs, imgsz, data, out / "model") if kwargs else str(model)
    finally:
        if made:
            sample.unlink(missing_ok=True)
    if name in CHECKS:
        return {"exported": str(exported)}
    _stage("load")
    backend, reference = _load(exported, name), _load(str(model), "pytorch")
    result = {"exported": str(exported), "sizes": {}}
    sizes = [imgsz] + ([second_size] if kwargs.get("dynamic") and second_size else [])
    for size in sizes:
        _stage(f"predict {size}")
        batch = load_images(images, size)
        got, want = _infer(backend, batch), _infer(reference, batch)
        result["sizes"][size] = {**raw_error(got, want, size), **match_boxes(got, want, conf=conf, min_iou=MIN_IOU)}
    if val:
        _stage("val")
        metrics = YOLO(exported, task="detect").val(
            data=data, imgsz=imgsz, batch=1, device="cpu", plots=False, verbose=False, project=str(out), name="val"
        )
        result["map"] = float(metrics.box.map)
    if baseline:
        _stage("latency")
        other = _export(baseline, kwargs, imgsz, data, out / "baseline") if kwargs else str(baseline)
        other = _load(other, name)
        batch = load_images(images, imgsz)  # the same check for the baseline: is a difference EMA's or the format's?
        result["baseline"] = raw_error(_infer(other, batch), _infer(_load(str(baseline), "pytorch"), batch), imgsz)
        ms = _latency([backend, other], load_images(images[:1], imgsz))
        result["latency_ms"], result["baseline_latency_ms"] = ms[0] * 1e3, ms[1] * 1e3
    return result


def _worker(argv):
    """Child-process entry: `python -m ema_yolo.export.check --worker SPEC.json RESULT.json`."""
    from ..integration.offline import prepare_offline

    prepare_offline()
    spec = json.loads(Path(argv[0]).read_text())
    result = check_case(**spec)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


def _status(precision, result):
    """'match' / 'MISMATCH' for fp32 (tolerances in the module docstring), 'ran' for reduced precision."""
    if "sizes" not in result:
        return "exported (unmeasured)"
    if precision != "fp32":
        return "ran"
    ok = all(r["raw"] < RAW_TOL and r["unmatched"] == 0 for r in result["sizes"].values())
    return "match" if ok else "MISMATCH"


def run_cases(names: list[str], spec: dict, out: str | Path, timeout: float = 1800) -> list[dict]:
    """Run each case of `names` in its own process; return one row per case (status, figures, failure reason).

    Args:
        names (list[str]): Keys of `CASES` or `UNAVAILABLE`.
        spec (dict): Keyword arguments of `check_case` shared by the cases (model, images, imgsz, ...).
        out (Path): Output folder; case `name` works in `out/name`.
        timeout (float): Seconds a case may take.

    Returns:
        (list[dict]): Per case: `case`, `precision`, `status` and, when it ran, `check_case`'s figures.
    """
    from ultralytics.utils import TQDM

    rows = []
    for name in TQDM(names, desc="check-exports", unit="case"):
        if name in UNAVAILABLE:
            rows.append({"case": name, "precision": "-", "status": f"not run: {UNAVAILABLE[name]}"})
            continue
        folder = Path(out) / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "spec.json").write_text(json.dumps({**spec, "name": name, "out": str(folder)}))
        command = [sys.executable, "-m", "ema_yolo.export.check", "--worker", "spec.json", "result.json"]
        env = {**os.environ, "YOLO_AUTOINSTALL": "false"}  # report a missing converter, never pip-install one
        start = time.perf_counter()
        with open(folder / "log.txt", "w") as log:
            try:
                code = subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = None
        row = {"case": name, "precision": CASES[name][1], "seconds": round(time.perf_counter() - start, 1)}
        if code == 0:
            row.update(json.loads((folder / "result.json").read_text()))
            row["status"] = _status(row["precision"], row)
        elif code == 1 and (missing := _not_installed(folder / "log.txt")):
            row["status"] = f"converter not installed: {missing}"
        else:
            row["status"] = f"FAILED: {_failure(folder / 'log.txt', code, timeout)}"
        rows.append(row)
    return rows


def _failure(log_file, code, timeout):
    """One line saying how and where a child failed: its last stage and its last error line."""
    lines = log_file.read_text(errors="replace").splitlines()
    stages = [line.split(" ", 1)[1] for line in lines if line.startswith("@@stage ")]
    where = f" during {stages[-1]}" if stages else ""
    if code is None:
        return f"timed out after {timeout:g} s{where}"
    errors = [line.strip() for line in lines if "Error" in line or "error" in line]
    return f"{describe_exit(code)}{where}" + (f": {errors[-1][:300]}" if errors else "")


def _not_installed(log_file):
    """The converter's missing requirement, if the child failed because Ultralytics found it not installed."""
    for line in log_file.read_text(errors="replace").splitlines():
        if found := re.search(r"(\['[^\]]*\]) not found, AutoUpdate disabled|(No module named \S+)", line):
            return found.group(2) or f"{found.group(1)} not found"
    return None


def _fmt(value, spec):
    """`value` formatted with `spec`, or '-' when absent."""
    return "-" if value is None else format(value, spec)


def report(rows: list[dict], reference_map: float | None = None) -> str:
    """Markdown table of `run_cases` rows (max over sizes of each error; mAP change vs `reference_map`)."""
    head = (
        "| case | precision | status | max raw diff | max box diff / imgsz | max score diff | boxes matched "
        "| baseline max raw diff | mAP50-95 | mAP change | latency ms (model / baseline) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sizes = list(r.get("sizes", {}).values())
        worst = {key: max(s[key] for s in sizes) if sizes else None for key in ("raw", "box", "score")}
        boxes = f"{sum(s['matched'] for s in sizes)}/{sum(s['boxes'] for s in sizes)}" if sizes else "-"
        for key in ("flips", "unmatched"):
            if sizes and any(s[key] for s in sizes):
                boxes += f", {sum(s[key] for s in sizes)} {key}"
        change = r["map"] - reference_map if "map" in r and reference_map is not None else None
        latency = f"{r['latency_ms']:.1f} / {r['baseline_latency_ms']:.1f}" if "latency_ms" in r else "-"
        lines.append(
            f"| {r['case']} | {r['precision']} | {r['status']} | {_fmt(worst['raw'], '.1e')} | {_fmt(worst['box'], '.1e')} "
            f"| {_fmt(worst['score'], '.1e')} | {boxes} | {_fmt(r.get('baseline', {}).get('raw'), '.1e')} "
            f"| {_fmt(r.get('map'), '.4f')} | {_fmt(change, '+.4f')} | {latency} |"
        )
    return "\n".join(lines)


def checkpoint_of(model: str | Path, out: str | Path) -> str:
    """`model` itself if it is a checkpoint; a model YAML is built (random weights) and saved to `out`."""
    if not str(model).endswith((".yaml", ".yml")):
        if not Path(model).is_file():
            raise FileNotFoundError(f"{model}: no such checkpoint")
        return str(Path(model).resolve())
    from ultralytics import YOLO

    path = Path(out) / f"{Path(model).stem}.pt"
    YOLO(model).save(path)
    return str(path.resolve())


if __name__ == "__main__":  # a case's own process (`run_cases`)
    sys.exit(_worker(sys.argv[2:]) if sys.argv[1:2] == ["--worker"] else 2)
