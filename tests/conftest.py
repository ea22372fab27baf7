"""Test setup: Ultralytics offline, with its settings and fonts in a throw-away folder (before it is imported)."""

import os
import tempfile

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ema-yolo-test-config-"))

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
