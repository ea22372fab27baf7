"""Every Ultralytics task with EMA (the paper's placement; detection: EMA in the C2f bottlenecks): train, validate,
predict and export with the stock tools, and load stock checkpoints.

Data: `make_task_dataset` (generated masks, keypoints, rotated boxes, class folders). Oracles: the stock model of the
same task (layer count and head), the generated labels' format as Ultralytics' loaders read them, and ONNX Runtime
against PyTorch on the same checkpoint and image.
"""

import numpy as np
import pytest
import torch

from ema_yolo.data.synth import make_task_dataset
from ema_yolo.nn import EMA
from ema_yolo.nn.csp_attn import AttnBottleneck

TASK_MODELS = {"segment": "yolo11n-seg-ema.yaml", "pose": "yolov8n-pose-ema.yaml", "obb": "yolo11n-obb-ema.yaml",
               "classify": "yolov8n-cls-ema.yaml", "detect": "yolov8n-c2f-ema.yaml"}  # fmt: skip
SUFFIX = {"segment": "seg", "pose": "pose", "obb": "obb", "classify": "cls"}


@pytest.mark.parametrize("family", ["yolov8", "yolo11"])
@pytest.mark.parametrize("task", list(SUFFIX))
def test_task_models_are_the_stock_model_with_ema_after_p4_and_p5(family, task):
    from ultralytics import YOLO

    stock, model = YOLO(f"{family}n-{SUFFIX[task]}.yaml").model, YOLO(f"{family}n-{SUFFIX[task]}-ema.yaml").model
    assert model.task == stock.task == task
    layers = list(model.model)
    ema = [i for i, m in enumerate(layers) if isinstance(m, EMA)]
    assert ema == [7, 10]  # after the P4 and P5 backbone blocks (stock rows 6 and 8)
    assert [layers[i].channels for i in ema] == [layers[6].cv2.conv.out_channels, layers[9].cv2.conv.out_channels]
    kept = [m for m in layers if not isinstance(m, EMA)]
    assert [type(m) for m in kept] == [type(m) for m in stock.model]
    assert [tuple(v.shape) for m in kept for v in m.state_dict().values()] == [
        tuple(v.shape) for m in stock.model for v in m.state_dict().values()
    ]


@pytest.mark.parametrize("task", list(TASK_MODELS))
def test_task_trains_validates_predicts_and_exports(task, tmp_path_factory):
    import onnxruntime as ort
    from ultralytics import YOLO
    from ultralytics.nn.autobackend import AutoBackend

    tmp = tmp_path_factory.mktemp(task)
    data = make_task_dataset(tmp / "data", task, train=4, val=2, size=64, seed=3)
    imgsz = 64  # P5 is 2x2: ONNX export of EMA on a 1x1 map (imgsz 32) crashes torch's exporter (SIGFPE)
    model = YOLO(TASK_MODELS[task])
    model.train(data=str(data), epochs=1, imgsz=imgsz, batch=4, device="cpu", workers=0, amp=False, plots=False,
                project=str(tmp), name="run", verbose=False, val=False)  # fmt: skip
    best = tmp / "run" / "weights" / "last.pt"
    trained = YOLO(best)
    assert trained.task == task
    if task == "detect":  # EMA inside the ten bottlenecks of yolov8n's C2f blocks
        assert sum(isinstance(m, AttnBottleneck) and isinstance(m.attn, EMA) for m in trained.model.modules()) == 10
    else:
        assert [i for i, m in enumerate(trained.model.model) if isinstance(m, EMA)] == [7, 10]

    metrics = trained.val(data=str(data), imgsz=imgsz, batch=4, device="cpu", workers=0, plots=False, verbose=False)
    key = {"segment": "metrics/mAP50-95(M)", "pose": "metrics/mAP50-95(P)", "obb": "metrics/mAP50-95(B)",
           "classify": "metrics/accuracy_top1", "detect": "metrics/mAP50-95(B)"}[task]  # fmt: skip
    assert 0.0 <= metrics.results_dict[key] <= 1.0

    image = next((tmp / "data").rglob("val/**/*.png"))
    result = trained.predict(str(image), imgsz=imgsz, conf=0.0, device="cpu", verbose=False)[0]
    if task == "segment":
        assert result.masks is not None and result.masks.data.shape[0] == len(result.boxes) > 0
    elif task == "pose":
        assert result.keypoints.data.shape[1:] == (3, 3) and len(result.boxes) > 0
    elif task == "obb":
        assert result.obb is not None and result.obb.xywhr.shape[1] == 5 and len(result.obb) > 0
    elif task == "classify":
        assert result.probs.data.shape == (3,) and abs(float(result.probs.data.sum()) - 1) < 1e-4
    else:
        assert len(result.boxes) > 0 and result.masks is None

    onnx = trained.export(format="onnx", imgsz=imgsz, simplify=False, device="cpu")
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    want = AutoBackend(str(best), device=torch.device("cpu"), fuse=True)(x)
    while isinstance(want, (list, tuple)):  # the first output: (detections, protos, ...) or nested
        want = want[0]
    want = want.numpy()
    got = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", ["yolov8", "yolo11"])
@pytest.mark.parametrize("task", list(SUFFIX))
def test_every_stock_tensor_of_each_task_lands(task, family, tmp_path, make_stock_checkpoint, monkeypatch):
    from ultralytics import YOLO

    from ema_yolo.integration.start import START_ENV

    monkeypatch.setenv(START_ENV, "published")  # tensor identity: no start touches a reader (tests/test_start.py)
    from ultralytics.nn.tasks import load_checkpoint

    from ema_yolo.integration.transfer import transfer_report

    from ultralytics.nn.tasks import yaml_model_load

    suffix = SUFFIX[task]
    nc = yaml_model_load(f"{family}n-{suffix}.yaml")["nc"]  # the stock YAML's class count (1 for yolov8-pose, ...)
    path = make_stock_checkpoint(tmp_path / f"{family}n-{suffix}.pt", f"{family}n-{suffix}.yaml", nc=nc, seed=5)
    stock = {k: v.float() for k, v in load_checkpoint(path)[0].state_dict().items() if v.is_floating_point()}
    model = YOLO(f"{family}n-{suffix}-ema.yaml").load(path).model
    kept = [j for j, m in enumerate(model.model) if not isinstance(m, EMA)]  # stock layer i is target layer kept[i]
    state = model.state_dict()
    for key, value in stock.items():
        _, i, rest = key.split(".", 2)
        assert torch.equal(state[f"model.{kept[int(i)]}.{rest}"].float(), value), key
    report = transfer_report(model)
    assert report.tensors[0] == report.tensors[1] and [j for j, _ in report.new_layers] == [7, 10]
