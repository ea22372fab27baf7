"""Ultralytics integration: registration, name resolution, the model zoo, training, checkpoints, DDP, offline."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ema_yolo
from ema_yolo.integration.model_cfgs import derive_twin, model_cfg_dir, model_names, resolve_model_cfg
from ema_yolo.integration.ultralytics import YAML_LAYERS
from ema_yolo.nn import EMA

# Detection models with attention rows; the in-block and other-task YAMLs: tests/test_csp_attn.py, tests/test_tasks.py
CFGS = [n for n in model_names() if not any(f"-{k}-" in n for k in ("c2f", "c3k2", "c3", "seg", "pose", "obb", "cls"))]


def _run(code_or_args, cwd, env=None, timeout=300):
    """Run Python code (str) or a command (list) in a fresh process; fail the test with its output on error."""
    cmd = [sys.executable, "-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _scaled(name, scale):
    """yolov8-ema.yaml, 's' -> yolov8s-ema.yaml (Ultralytics' naming for a scale)."""
    family, _, rest = name.partition("-")
    return f"{family}{scale}-{rest}" if rest else name.replace(".yaml", f"{scale}.yaml")


def test_register_is_idempotent_and_injects_names():
    from ultralytics.nn import tasks
    from ultralytics.utils import checks

    ema_yolo.register()
    wrapped = checks.check_file
    ema_yolo.register()
    assert checks.check_file is wrapped
    for name, cls in YAML_LAYERS.items():
        assert getattr(tasks, name) is cls


def test_attention_rows_take_their_width_from_the_graph(caplog):
    # Pins the mechanism against the installed Ultralytics: an attention layer is built for the real width of the
    # layer it reads from, whatever its `from` and whatever width its row writes; a literal that is not that width
    # once scaled is accepted with one warning line.
    from ultralytics.nn.tasks import parse_model

    d = {
        "nc": 2,
        "scales": {"s": [1.0, 0.75, 1024]},
        "scale": "s",
        "yaml_file": "/somewhere/my-model.yaml",
        "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "EMA", ["c2"]], [-1, 1, "Conv", [48, 3, 1]]],
        "head": [[-1, 1, "SE", ["c2"]], [-1, 1, "CBAM", [48]], [1, 1, "CA", [64]], [0, 1, "EMA", [512, 8]], [-1, 2, "SE", []]],
    }
    for _ in range(2):
        model, _ = parse_model(json.loads(json.dumps(d)), ch=3, verbose=False)
    assert model[1].channels == 48 and model[1].groups == 24  # 64 * 0.75 = 48 -> 24 groups of 2
    assert model[3].fc1.in_channels == model[4].fc1.in_channels == 40  # 48 * 0.75 = 36 -> 40 (multiple of 8)
    assert model[5].conv1.in_channels == 48  # reads layer 1: 48, its written 64 scales to 48, so no warning
    assert (model[6].channels, model[6].groups) == (48, 8)  # reads layer 0 (48), not the previous layer (40)
    assert [m.fc1.in_channels for m in model[7]] == [48, 48]  # no width written, repeated twice
    warnings = [r.getMessage() for r in caplog.records if "my-model.yaml" in r.getMessage()]
    assert warnings == ["my-model.yaml: layer 6 EMA [512] is 384 channels at this scale, but the layer it reads from "
                        "gives 48; using 48 (write [c2] to take it from the graph)"]  # once, though parsed twice
    d["head"][0][0] = [-1, 2]
    with pytest.raises(ValueError, match=r"my-model.yaml: layer 3 \(SE\) reads from \[-1, 2\]: an attention layer reads one"):
        parse_model(d, ch=3, verbose=False)


def test_registration_fails_clearly_if_ultralytics_changes(monkeypatch):
    from ultralytics.nn import tasks

    stock = tasks.parse_model.ema_yolo_wrapped

    def renamed_locals(d, ch, verbose=True):  # a parser whose locals no longer hold 'ch'
        def rows(part):
            return [[f, n, m, ["channels" if a == "ch" else a for a in args]] for f, n, m, args in d[part]]

        return stock({**d, "backbone": rows("backbone"), "head": rows("head")}, ch, verbose)

    monkeypatch.setattr(tasks, "parse_model", renamed_locals)
    with pytest.raises(RuntimeError, match=r"cannot hook into ultralytics .*no longer has the locals \('ch'"):
        ema_yolo.register()
    monkeypatch.setattr(tasks, "parse_model", lambda d, ch, verbose=True: (_ for _ in ()).throw(KeyError("EMA")))
    with pytest.raises(RuntimeError, match=r"cannot hook into ultralytics .*KeyError: 'EMA'"):
        ema_yolo.register()


def test_every_yaml_at_every_scale_builds_and_runs():
    from ultralytics.nn.tasks import DetectionModel

    assert len(CFGS) == 41  # 9 shipped files (8 -ema and yolov5-p2) and 32 twins derived from the -ema ones
    for name in CFGS:
        derived = not resolve_model_cfg(name)  # a twin is its -ema file's rows with the layer swapped (test_csp_attn):
        # the -ema file runs at every scale, the twin at n
        for scale in "n" if derived else "nsmlx":
            model = DetectionModel(_scaled(name, scale), nc=3, verbose=False).eval()
            with torch.no_grad():
                y = model(torch.zeros(1, 3, 64, 64))
            levels = 4 if "-p2" in name else 3
            assert y[0].shape == (1, 4 + 3, sum((64 // s) ** 2 for s in (4, 8, 16, 32)[4 - levels :]))


def test_exact_parameter_counts():
    from ultralytics import YOLO

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(YOLO("yolov5s-ema.yaml").model) - count(YOLO("yolov5s.yaml").model) == 3296
    p2x = YOLO("yolov5x-p2-ema.yaml").model
    assert sum(count(m) for m in p2x.modules() if isinstance(m, EMA)) == 11280
    assert sum(isinstance(m, EMA) for m in p2x.modules()) == 5
    assert count(p2x) - count(YOLO("yolov5x-p2.yaml").model) == 11280


@pytest.mark.parametrize("layer", ["ema", "cbam"])
def test_rows_with_literal_widths_build_the_c2_model_and_train(layer, tiny_dataset, tmp_path, caplog):
    # Public recipes write an attention row's unscaled width, as for Conv: [-1, 1, EMA, [512]]. yolov8-<layer>.yaml
    # written that way builds the same model as with [c2] at scales n and x, without a warning, and trains.
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    d = yaml.safe_load((model_cfg_dir() / "yolov8-ema.yaml").read_text())
    d = derive_twin(d, layer) if layer != "ema" else d
    rows = d["backbone"] + d["head"]
    attention = [i for i, row in enumerate(rows) if row[3] == ["c2"]]
    for i in attention:
        rows[i][3] = [rows[i - 1][3][0]]  # the width written on the row before
    assert [rows[i][3] for i in attention] == [[512], [1024]]
    for scale in "nx":
        (tmp_path / f"yolov8{scale}-{layer}.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
        literal, c2 = YOLO(tmp_path / f"yolov8{scale}-{layer}.yaml").model, YOLO(f"yolov8{scale}-{layer}.yaml").model
        assert sum(p.numel() for p in literal.parameters()) == sum(p.numel() for p in c2.parameters())
        assert str(literal.model[7]) == str(c2.model[7]) and str(literal.model[10]) == str(c2.model[10])
    assert not [r for r in caplog.records if "yaml: layer" in r.getMessage()]
    model = YOLO(tmp_path / f"yolov8n-{layer}.yaml")
    model.train(data=str(tiny_dataset), epochs=1, imgsz=64, batch=8, device="cpu", workers=0, amp=False, plots=False,
                project=str(tmp_path), name="train", verbose=False)
    trained = torch.load(tmp_path / "train" / "weights" / "last.pt", weights_only=False)["model"]
    c2 = DetectionModel(f"yolov8n-{layer}.yaml", nc=3, verbose=False)  # with the dataset's 3 classes
    assert {k: v.shape for k, v in trained.state_dict().items()} == {k: v.shape for k, v in c2.state_dict().items()}


def test_ablation_twins_differ_from_the_ema_file_only_in_the_layer():
    from ultralytics.nn.tasks import yaml_model_load

    twins = 0
    for name in CFGS:
        for layer in ("cbam", "ca", "se", "eca"):
            if name.endswith(f"-{layer}.yaml"):
                ema, twin = yaml_model_load(name.replace(f"-{layer}.yaml", "-ema.yaml")), yaml_model_load(name)
                rows = [[f, n, layer.upper() if m == "EMA" else m, a] for f, n, m, a in ema["backbone"] + ema["head"]]
                assert sum(m == "EMA" for _, _, m, _ in ema["backbone"] + ema["head"]) >= 2
                assert twin["backbone"] + twin["head"] == rows and twin["yaml_file"] == name
                twins += 1
    # 8 -ema files with rows (yolov5, yolov5-p2, yolov8, yolov8-p2, yolo11, yolo12, yolo26, yolo26-p2) x 4 layers
    assert twins == 32 and not [p for p in model_cfg_dir().glob("*.yaml") if p.stem.endswith(("-cbam", "-ca", "-se", "-eca"))]


def test_bare_names_resolve_from_any_folder_in_a_fresh_process(tmp_path):
    out = _run(
        "from ultralytics import YOLO; m = YOLO('yolo11s-ema.yaml'); "
        "print(sum(type(x).__name__ == 'EMA' for x in m.model.modules()), m.model.yaml['scale'])",
        cwd=tmp_path,
    )
    assert out.split()[-2:] == ["2", "s"]


def test_wheel_ships_cfgs_and_autoload(tmp_path):
    # Build the wheel, install it into a folder, and use it from a fresh interpreter that sees neither this source
    # tree nor the editable install: the wheel's own .pth must register EMA and its cfg/ must resolve bare names.
    import sysconfig

    root = Path(__file__).resolve().parents[1]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(root)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("ema_yolo-*.whl"))
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)], cwd=tmp_path)
    assert (tmp_path / "site" / "ema_yolo_autoload.pth").is_file()
    assert (tmp_path / "site" / "ema_yolo" / "cfg" / "yolov8-ema.yaml").is_file()
    code = (
        "import sys, site; "
        f"sys.path[:] = [p for p in sys.path if 'site-packages' not in p] + [{sysconfig.get_paths()['purelib']!r}]; "
        f"site.addsitedir({str(tmp_path / 'site')!r}); sys.path.insert(0, sys.path.pop()); "
        "from ultralytics import YOLO; import ema_yolo; m = YOLO('yolov8s-ema.yaml'); "
        "print(ema_yolo.__file__, sum(type(x).__name__ == 'EMA' for x in m.model.modules()))"
    )
    out = _run([sys.executable, "-S", "-c", code], cwd=tmp_path).split()
    assert out[-2].startswith(str(tmp_path / "site")) and out[-1] == "2"  # addsitedir ran the wheel's .pth


def test_interpreter_start_hook_imports_only_itself(tmp_path):
    # The .pth line runs in every Python process of the environment: it must import one small module and nothing
    # else (the old hook pulled in importlib.abc and ema_yolo, ~30-50 ms here). Timed in fresh interpreters by
    # CPython's own -X importtime; the bound is loose for a shared machine, the module list is exact.
    import shutil
    import statistics

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "ema_yolo_autoload.pth", tmp_path)
    code = (
        "import sys, site; before = set(sys.modules); site.addsitedir(sys.argv[1]); "
        "print(sorted(set(sys.modules) - before), type(sys.meta_path[0]).__name__)"
    )
    costs_us = []
    for _ in range(5):
        proc = subprocess.run(
            [sys.executable, "-S", "-X", "importtime", "-c", code, str(tmp_path)],
            env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split() == ["['ema_yolo_autoload']", "_TasksFinder"]
        (line,) = [x for x in proc.stderr.splitlines() if x.endswith("| ema_yolo_autoload")]
        costs_us.append(int(line.split("|")[1]))  # cumulative microseconds
    assert statistics.median(costs_us) < 10_000, costs_us


def test_explicit_entry_point_runs_the_stock_command(tmp_path):
    from ultralytics.utils import ASSETS

    _run([sys.executable, "-m", "ema_yolo", "yolo", "predict", "model=yolov8n-ema.yaml", f"source={ASSETS / 'bus.jpg'}",
          "imgsz=64", "device=cpu", f"project={tmp_path}", "name=p", "save=True"], cwd=tmp_path)
    assert (tmp_path / "p" / "bus.jpg").is_file()


def test_train_through_the_stock_yolo_command(tiny_dataset, tmp_path):
    yolo = Path(sys.executable).with_name("yolo")
    _run(
        [str(yolo), "train", "model=yolov8n-ema.yaml", f"data={tiny_dataset}", "epochs=1", "imgsz=64", "batch=8",
         "device=cpu", "workers=0", "amp=False", "plots=False", f"project={tmp_path}", "name=cli"],
        cwd=tmp_path,
    )
    ckpt = torch.load(tmp_path / "cli" / "weights" / "last.pt", weights_only=False)
    assert sum(isinstance(m, EMA) for m in ckpt["model"].modules()) == 2


def test_checkpoint_predict_val_export_finetune_in_fresh_process(trained_checkpoint, tiny_dataset, tmp_path):
    code = f"""
import json, numpy as np, onnxruntime as ort
from ultralytics import YOLO
from ultralytics.utils import ASSETS
m = YOLO({str(trained_checkpoint)!r})
n_ema = sum(type(x).__name__ == 'EMA' for x in m.model.modules())
r = m.predict(ASSETS / 'bus.jpg', imgsz=64, device='cpu', verbose=False)[0]
metrics = m.val(data={str(tiny_dataset)!r}, imgsz=64, device='cpu', plots=False, project={str(tmp_path)!r}, name='v')
ts = YOLO({str(trained_checkpoint)!r}).export(format='torchscript', imgsz=64)
onnx = YOLO({str(trained_checkpoint)!r}).export(format='onnx', imgsz=64, dynamic=True, simplify=False)
sess = ort.InferenceSession(onnx, providers=['CPUExecutionProvider'])
out = sess.run(None, {{sess.get_inputs()[0].name: np.zeros((2, 3, 96, 128), np.float32)}})[0]
ft = YOLO({str(trained_checkpoint)!r})
ft.train(data={str(tiny_dataset)!r}, epochs=1, imgsz=64, batch=8, device='cpu', workers=0, amp=False, plots=False,
         project={str(tmp_path)!r}, name='ft')
print(json.dumps({{"ema": n_ema, "map": float(metrics.box.map), "onnx": list(out.shape), "ts": ts}}))
"""
    result = json.loads(_run(code, cwd=tmp_path, timeout=600).strip().splitlines()[-1])
    assert result["ema"] == 2 and 0.0 <= result["map"] <= 1.0
    assert result["onnx"] == [2, 4 + 3, (96 * 128) // 64 + (96 * 128) // 256 + (96 * 128) // 1024]  # not the export size
    assert Path(result["ts"]).is_file()
    assert (tmp_path / "ft" / "weights" / "last.pt").is_file()


def test_safe_load_in_fresh_process(trained_checkpoint, tmp_path):
    out = _run(
        f"from ultralytics import YOLO; m = YOLO({str(trained_checkpoint)!r}); "
        "print(sum(type(x).__name__ == 'EMA' for x in m.model.modules()))",
        cwd=tmp_path,
        env={"ULTRALYTICS_SAFE_LOAD": "1"},
    )
    assert out.split()[-1] == "2"


def test_ddp_worker_script_rebuilds_ema_model_in_fresh_interpreter(tiny_dataset, stock_yolov8n_nc3, tmp_path):
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.dist import generate_ddp_file

    trainer = DetectionTrainer(
        overrides={"model": "yolov8n-ema.yaml", "data": str(tiny_dataset), "epochs": 1, "imgsz": 64, "batch": 8,
                   "device": "cpu", "workers": 0, "amp": False, "plots": False, "project": str(tmp_path), "name": "ddp",
                   "pretrained": str(stock_yolov8n_nc3)}
    )
    script = generate_ddp_file(trainer)
    out = _run([sys.executable, script], cwd=tmp_path, timeout=600)
    assert "Transferred 298/298 stock tensors" in out  # the worker's fresh interpreter transfers structurally too
    ckpt = torch.load(tmp_path / "ddp" / "weights" / "last.pt", weights_only=False)
    assert sum(isinstance(m, EMA) for m in ckpt["model"].modules()) == 2


def test_demo_path_opens_no_network_connection(tmp_path, monkeypatch):
    from ema_yolo.demo import run_demo

    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local(host):
        return host in ("localhost", "::1", "") or str(host).startswith("127.")

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and not local(host):
            attempts.append(address)
            raise OSError("network blocked by test")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not local(host):
            attempts.append(host)
            raise socket.gaierror("network blocked by test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    figures = run_demo(tmp_path / "demo", epochs=1, imgsz=64, train_images=16, val_images=8)
    assert attempts == []
    assert figures["ema_modules"] == 2
    assert figures["video_frames"] == 48
    for name in ("report.md", "figures.json", "predict_heldout.jpg", "train/results.png", "clip_annotated.mp4"):
        assert (tmp_path / "demo" / name).is_file(), name
