"""Test setup: Ultralytics offline, with its settings and fonts in a throw-away folder (before it is imported)."""

import atexit
import os
import shutil
import tempfile

if "YOLO_CONFIG_DIR" not in os.environ:
    os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="ema-yolo-test-config-")
    atexit.register(shutil.rmtree, os.environ["YOLO_CONFIG_DIR"], ignore_errors=True)  # leave no folder behind

from ema_yolo.integration.offline import prepare_offline  # noqa: E402

prepare_offline()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A generated 3-class YOLO dataset of 16 train and 8 val images, 64 px."""
    from ema_yolo.data.synth import make_yolo_dataset

    return make_yolo_dataset(tmp_path_factory.mktemp("data"), train=16, val=8, size=64, seed=1)


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_dataset, tmp_path_factory):
    """best.pt of a yolov8n-ema trained 1 epoch through the Python API."""
    from ultralytics import YOLO

    out = tmp_path_factory.mktemp("train")
    YOLO("yolov8n-ema.yaml").train(
        data=str(tiny_dataset), epochs=1, imgsz=64, batch=8, device="cpu", workers=0, amp=False, plots=False,
        project=str(out), name="run", verbose=False,
    )
    return out / "run" / "weights" / "best.pt"


def _stock_checkpoint(path, cfg, nc=80, seed=0):
    """Save a stock (ema-yolo-free) model of `cfg` with random tensors as Ultralytics does (half precision).

    No pretrained weights can be downloaded here; random tensors make every tensor distinctive, so a misplaced one
    cannot pass for the right one. The Detect head's DFL projection keeps its fixed 0..15 (not trained; as in every
    stock checkpoint): random, it decodes boxes with negative sizes, which Ultralytics' plotting thread fails to draw.
    BatchNorm statistics are then those of a generated batch, as a trained network's are those of its data: every
    layer's output stays of order 1 and depends on the input (with random statistics, activations grow to 1e29 in
    YOLO11 and overflow the attention blocks of YOLO12 and YOLO26 to NaN, or, scaled down, the outputs no longer
    depend on the input, and a comparison of outputs could not fail).
    """
    import torch
    from ultralytics.nn import tasks

    torch.manual_seed(seed)
    task = tasks.guess_model_task(tasks.yaml_model_load(cfg))  # the stock model class of the YAML's task
    model_class = {"segment": tasks.SegmentationModel, "pose": tasks.PoseModel, "obb": tasks.OBBModel,
                   "classify": tasks.ClassificationModel}.get(task, tasks.DetectionModel)  # fmt: skip
    model = model_class(cfg, nc=nc, verbose=False)
    fixed = {name for name, p in model.named_parameters() if not p.requires_grad}  # the DFL projection
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and name not in fixed:
                t.uniform_(-1, 1)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # the batch's own mean and (unbiased) variance
        model.train()(torch.rand(4, 3, 64, 64))
        for m in norms:
            m.momentum = 0.03  # Ultralytics' value (`initialize_weights`)
    model.eval()
    model.names = {i: f"class{i}" for i in range(nc)}
    torch.save({"model": model.half(), "train_args": {}}, path)
    return path


@pytest.fixture(scope="session")
def make_stock_checkpoint():
    """The function that saves a random stock checkpoint: (path, cfg, nc=80, seed=0) -> path."""
    return _stock_checkpoint


@pytest.fixture(scope="session")
def stock_yolov8n_nc3(tmp_path_factory):
    """A random stock yolov8n checkpoint with the 3 classes of `tiny_dataset`."""
    return _stock_checkpoint(tmp_path_factory.mktemp("stock") / "yolov8n-nc3.pt", "yolov8n.yaml", nc=3, seed=1)


@pytest.fixture(autouse=True)
def _no_deterministic_algorithms_left_on():
    """Ultralytics' trainer turns on `torch.use_deterministic_algorithms` for the whole process (`deterministic=True`,
    its default) and leaves it on; tests that train in-process must not change what later tests run."""
    import torch

    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture
def ultralytics_log():
    """The messages Ultralytics' logger emits during the test (it does not propagate to the root logger)."""
    import logging

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    handler = Lines()
    logger = logging.getLogger("ultralytics")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
