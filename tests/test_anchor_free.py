"""YOLOv5u (anchor-free head, DFL, task-aligned assignment) against fixtures made from Ultralytics 8.4
(tests/fixtures/make_anchor_free_fixtures.py; the tests only read its files)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file
from seeded_weights import seeded_state_dict

from yolo_accel.config import LossHyp
from yolo_accel.loss_anchor_free import AnchorFreeLoss
from yolo_accel.model import build_model
from yolo_accel.model.summary import summarize

FIXTURE = FIXTURES / "anchor_free"
TABLE = json.loads((FIXTURE / "models.json").read_text())
TINY_U = FIXTURE / "tiny_u.yaml"


@pytest.mark.parametrize("variant", list(TABLE))
def test_variants_have_ultralytics_keys_parameters_and_gflops(variant):
    reference = TABLE[variant]
    model = build_model(variant)
    assert model.anchor_free
    keys = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
    assert keys == reference["keys"]
    summary = summarize(model)
    assert (summary.layers, summary.parameters, summary.gradients, round(summary.gflops, 1)) == \
        (reference["layers"], reference["parameters"], reference["gradients"], reference["gflops"])


def assert_outputs_match(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    images = expected["images"]
    with torch.no_grad():
        train_maps = __import__("copy").deepcopy(model).train()(images)
        for i, level in enumerate(train_maps):
            torch.testing.assert_close(level, expected[f"train.{i}"], rtol=1e-4, atol=1e-4)
        model.eval()
        torch.testing.assert_close(model(images[:1]), expected["eval"], rtol=1e-4, atol=1e-3)
        model.fuse()
        torch.testing.assert_close(model(images[:1]), expected["eval_fused"], rtol=1e-4, atol=1e-3)


def test_outputs_equal_ultralytics_under_the_same_weights():
    model = build_model(TINY_U)
    model.load_state_dict(seeded_state_dict(model.state_dict()))
    assert_outputs_match(model, load_file(str(FIXTURE / "outputs_tiny_u.safetensors")))


CASES = json.loads((FIXTURE / "loss_cases.json").read_text())
LOSS = load_file(str(FIXTURE / "loss_tiny_u.safetensors"))


@pytest.mark.parametrize("case", list(CASES["cases"]))
def test_loss_assignment_and_gradients_equal_ultralytics(case):
    model = build_model(TINY_U)
    gains = LossHyp(box=CASES["gains"]["box"], cls=CASES["gains"]["cls"], dfl=CASES["gains"]["dfl"])
    criterion = AnchorFreeLoss.from_detect(model.model[-1], gains)
    maps = [LOSS[f"maps.{i}"].clone().requires_grad_(True) for i in range(3)]
    targets = LOSS[f"{case}.targets"]
    loss, items = criterion(maps, targets)
    loss.backward()
    torch.testing.assert_close(loss.detach().reshape(1), LOSS[f"{case}.loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, LOSS[f"{case}.items"], rtol=1e-5, atol=1e-6)
    for i, leaf in enumerate(maps):
        torch.testing.assert_close(leaf.grad, LOSS[f"{case}.grad.{i}"], rtol=1e-4, atol=1e-6)

    # the assigner's choices themselves
    batch = maps[0].shape[0]
    flat = torch.cat([m.detach().view(batch, m.shape[1], -1) for m in maps], 2)
    distances, logits = flat.split((64, 3), 1)
    from yolo_accel.model.yolo import distances_to_boxes, make_anchor_points

    points, strides = make_anchor_points([m.shape[2:] for m in maps], [8.0, 16.0, 32.0], torch.float32, "cpu")
    expected = distances.permute(0, 2, 1).reshape(batch, -1, 4, 16).softmax(3).matmul(torch.arange(16.0))
    boxes = distances_to_boxes(expected, points, xywh=False) * strides
    labels, gt_boxes = criterion.padded_targets(targets, batch, 64, 64)
    target_boxes, _, foreground, assigned = criterion.assigner(
        logits.permute(0, 2, 1).sigmoid(), boxes, points * strides, labels, gt_boxes, gt_boxes.sum(2, True) > 0)
    assert torch.equal(foreground, LOSS[f"{case}.fg_mask"].bool())
    assert int(foreground.sum()) == CASES["cases"][case]["positives"]
    if foreground.any():
        assert torch.equal(assigned[foreground], LOSS[f"{case}.target_gt_idx"][foreground])
        torch.testing.assert_close(target_boxes[foreground], LOSS[f"{case}.target_bboxes"][foreground])


def test_every_parameter_gets_a_gradient():
    model = build_model(TINY_U).train()
    criterion = AnchorFreeLoss.from_detect(model.model[-1], LossHyp(box=7.5, cls=0.5, dfl=1.5))
    # small and large boxes, so that every level's cells get assigned something
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2], [0, 0, 0.5, 0.5, 0.95, 0.95],
                            [1, 1, 0.5, 0.5, 0.9, 0.8]])
    loss, items = criterion(model(torch.rand(2, 3, 128, 128)), targets)
    loss.backward()
    assert torch.isfinite(loss) and (items > 0).all()
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None for p in trainable.values())  # everything is in the graph
    # the box branch of a level gets gradient only from cells assigned to some box; every class branch does
    zero = [k for k, p in trainable.items() if not p.grad.any() and not k.startswith("model.24.cv2.")]
    assert not zero, zero


def test_an_ultralytics_yolov5u_checkpoint_converts_with_identical_outputs(tmp_path):
    from typer.testing import CliRunner

    from yolo_accel.checkpoint import import_ultralytics, load_model
    from yolo_accel.cli import app

    model, names, _ = import_ultralytics(FIXTURE / "tiny_u_ultralytics.pt")
    assert model.anchor_free and names == ["red", "green", "blue"]
    assert_outputs_match(model, load_file(str(FIXTURE / "tiny_u_outputs.safetensors")))
    out = tmp_path / "tiny_u.safetensors"  # and through the command, to weights that load on their own
    result = CliRunner().invoke(app, ["convert", str(FIXTURE / "tiny_u_ultralytics.pt"), str(out)])
    assert result.exit_code == 0, result.output
    assert load_model(out).anchor_free


# ---- training, validation, detection, export and evolution with a u-model ----


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from yolo_accel.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("data"), train_images=16, val_images=8, imgsz=64, seed=3)


def u_config(data, project, **overrides):
    from yolo_accel.config import TrainConfig

    options = dict(data=str(data), model=str(TINY_U), epochs=2, batch_size=8, imgsz=64, workers=0,
                   project=str(project), noplots=True)
    return TrainConfig(**{**options, **overrides})


def test_a_u_model_trains_with_its_own_recipe_and_serves_val_detect_and_export(tiny_data, tmp_path, caplog):
    import yaml

    from yolo_accel import YOLO
    from yolo_accel.checkpoint import load_model
    from yolo_accel.export import export, output_difference
    from yolo_accel.results import read_results
    from yolo_accel.train import train
    from yolo_accel.val import validate

    with caplog.at_level("INFO", logger="yolo_accel"):
        run = train(u_config(tiny_data, tmp_path, noplots=False))
    assert (run / "results.png").stat().st_size > 10_000 and (run / "confusion_matrix.png").is_file()
    header = [h.strip() for h in (run / "results.csv").read_text().splitlines()[0].split(",")]
    assert header[1:4] == ["train/box_loss", "train/cls_loss", "train/dfl_loss"]  # Ultralytics' names
    assert header[8:11] == ["val/box_loss", "val/cls_loss", "val/dfl_loss"]
    rows = read_results(run / "results.csv")
    assert all(0 < rows[-1][k] < 20 for k in header[1:4] + header[8:11])
    opt, hyp = (yaml.safe_load((run / f"{n}.yaml").read_text()) for n in ("opt", "hyp"))
    # the recipe: the anchor-free hyp, auto -> AdamW with lr0 = 0.002 * 5 / (4 + 6 classes), close_mosaic 10
    assert (opt["optimizer"], opt["close_mosaic"]) == ("AdamW", 10) and opt["hyp"] == "anchor-free"
    assert (hyp["lr0"], hyp["momentum"], hyp["warmup_bias_lr"], hyp["dfl"], hyp["box"]) == (0.001, 0.9, 0.0, 1.5, 7.5)
    assert "obj" not in hyp and "anchor_t" not in hyp
    text = caplog.text
    assert "optimizer: auto chose AdamW(lr=0.001, momentum=0.9) for 16 images, 2 epochs" in text
    assert "box_loss   cls_loss   dfl_loss" in text and "AutoAnchor" not in text

    best = run / "weights" / "best.safetensors"
    assert load_model(best).anchor_free
    _, (result,) = validate(str(tiny_data), [str(best)], imgsz=64, workers=0, project=str(tmp_path / "val"))
    assert result.images == 8 and len(result.results()) == 7 and all(v == v for v in result.results())
    images = sorted((tiny_data.parent / "images" / "val").glob("*.png"))
    predictions = YOLO(str(best)).predict([str(p) for p in images], imgsz=64, conf=0.001)
    assert len(predictions) == 8 and sum(len(p.boxes_xyxy) for p in predictions) > 0
    assert all(((p.scores >= 0.001) & (p.scores <= 1)).all() for p in predictions)

    with caplog.at_level("INFO", logger="yolo_accel"):
        (path,) = export(str(best), include=("torchscript",), imgsz=64, device="cpu")
    assert "(batch, boxes, xywh + 6 class scores)" in caplog.text
    extra = {"config.txt": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["config.txt"])["anchor_free"] is True
    check = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = load_model(best).eval().fuse()(check)
    assert expected.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 4 + 6)  # anchor points of strides 8, 16, 32; no objectness
    assert output_difference(scripted(check), expected, 64) <= 1e-4


def test_a_u_model_stopped_mid_epoch_resumes_to_the_same_weights(tiny_data, tmp_path, monkeypatch):
    from test_train import final_weights, latest_state, max_difference, train_stopped_in_epoch_1

    from yolo_accel.config import TrainConfig
    from yolo_accel.train import train

    train(u_config(tiny_data, tmp_path / "a", noval=True, close_mosaic=1))
    train_stopped_in_epoch_1(u_config(tiny_data, tmp_path / "b", noval=True, close_mosaic=1), after_batches=1,
                             monkeypatch=monkeypatch)
    run = tmp_path / "b" / "exp"
    assert json.loads((latest_state(run) / "trainer.json").read_text())["loop"]["batch"] == 1
    train(TrainConfig(resume=str(run)))
    assert max_difference(final_weights(tmp_path / "a" / "exp"), final_weights(run)) <= 1e-6


def test_fine_tuning_converted_ultralytics_u_weights(tiny_data, tmp_path, caplog):
    from yolo_accel.checkpoint import import_ultralytics, save_weights
    from yolo_accel.train import train

    model, names, _ = import_ultralytics(FIXTURE / "tiny_u_ultralytics.pt")
    weights = save_weights(model, tmp_path / "tiny_u.safetensors", names=names)
    with caplog.at_level("INFO", logger="yolo_accel"):
        train(u_config(tiny_data, tmp_path, model="", weights=str(weights), epochs=1, noval=True))
    total = len(model.state_dict())
    # all but the class branch's last conv per level (3 classes there, 6 here): weight and bias
    assert f"Transferred {total - 6}/{total} items from {weights}" in caplog.text
    assert "optimizer: auto chose AdamW" in caplog.text  # the weights' model is anchor-free: its recipe


def test_recipes_and_models_must_fit(tiny_data, tmp_path, caplog):
    from yolo_accel.config import ConfigError
    from yolo_accel.train import train

    with pytest.raises(ConfigError, match=r"recipe for anchor-free.*without anchor_t"):
        train(u_config(tiny_data, tmp_path, model="yolov5n", hyp="anchor-free"))
    assert not (tmp_path / "exp").exists()  # refused before the run folder
    with caplog.at_level("INFO", logger="yolo_accel"):  # a YOLOv5 hyp on a u-model: its own keys stay unused
        train(u_config(tiny_data, tmp_path, hyp="scratch-low", optimizer="SGD", epochs=1, noval=True))
    assert "anchor_t, cls_pw, fl_gamma, iou_t, obj, obj_pw do not apply to anchor-free models" in caplog.text
    assert "optimizer: SGD(lr=0.01)" in caplog.text


def test_evolve_mutates_the_anchor_free_gains_within_their_bounds(tiny_data, tmp_path):
    import yaml

    from yolo_accel.evolve import ANCHOR_FREE_BOUNDS, evolve, read_ledger

    run = evolve(u_config(tiny_data, tmp_path, epochs=1), generations=2, project=str(tmp_path / "evolve"), seed=0)
    header, rows = read_ledger(run / "evolve.csv")
    assert header[4:7] == ["val/box_loss", "val/cls_loss", "val/dfl_loss"]
    assert "dfl" in header and not {"obj", "anchor_t", "anchors"} & set(header)
    assert rows.shape[0] == 2
    for key in ("box", "cls", "dfl"):
        low, high = ANCHOR_FREE_BOUNDS[key][1:]
        assert all(low <= v <= high for v in rows[:, header.index(key)])
    start = yaml.safe_load((run / "hyp_start.yaml").read_text())  # auto decided once, for every candidate
    assert start["lr0"] == 0.001 and yaml.safe_load((run / "opt.yaml").read_text())["optimizer"] == "AdamW"
    assert rows[0, header.index("lr0")] == 0.001  # the first candidate starts from it


def test_a_u_model_exports_to_dynamic_onnx(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from yolo_accel.checkpoint import import_ultralytics, load_model, save_weights
    from yolo_accel.export import export, output_difference

    model, names, _ = import_ultralytics(FIXTURE / "tiny_u_ultralytics.pt")
    weights = save_weights(model, tmp_path / "tiny_u.safetensors", names=names)
    (path,) = export(str(weights), include=("onnx",), imgsz=64, dynamic=True, device="cpu")
    images = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(2))  # another batch and size
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = load_model(weights).eval().fuse()(images)
    assert output.shape == tuple(expected.shape) == (2, 12 * 20 + 6 * 10 + 3 * 5, 4 + 3)
    assert output_difference(torch.from_numpy(output), expected, 160) <= 1e-4
