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
