"""The YOLOv5 v7.0 detection loss: parity with fixtures from tests/fixtures/make_loss_fixtures.py, and invariants."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from conftest import REFERENCE
from safetensors.torch import load_file

from yolo_accel.config import LossHyp, hyp_slice
from yolo_accel.loss import DetectionLoss, build_targets, scale_loss_gains
from yolo_accel.model import build_model

CASES = json.loads((REFERENCE / "loss_cases.json").read_text())
SETS = {name: load_file(REFERENCE / f"loss_{name}.safetensors") for name in {c["set"] for c in CASES.values()}}
def gains(values: dict) -> LossHyp:
    return hyp_slice(LossHyp, values)


HYP = {"box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0}


def level_tensors(group: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    return [group[f"{prefix}.{i}"] for i in range(len(group["stride"]))]


def run(criterion: DetectionLoss, predictions: list[torch.Tensor], targets: torch.Tensor, calls: int = 1):
    """The last of `calls` successive calls: (loss, items, gradients w.r.t. each prediction map)."""
    for _ in range(calls):
        leaves = [p.clone().requires_grad_() for p in predictions]
        loss, items = criterion(leaves, targets)
    loss.backward()
    return loss.detach(), items, [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case):
    spec = CASES[case]
    group = SETS[spec["set"]]
    scaled = scale_loss_gains(gains(spec["unscaled_hyp"]), spec["nl"], spec["nc"], spec["imgsz"])
    assert asdict(scaled) == pytest.approx(asdict(gains(spec["hyp"])), rel=1e-12)
    criterion = DetectionLoss(group["anchors"], group["stride"], spec["nc"], gains(spec["hyp"]), spec["autobalance"])
    loss, items, grads = run(criterion, level_tensors(group, "predictions"), group[f"{case}.targets"], spec["calls"])

    # the reference keeps 5 weights (P3-P7) for a 4-level model and uses the first 4
    assert criterion.balance == pytest.approx(spec["balance"][:spec["nl"]], rel=1e-12)
    assert loss.shape == () and items.shape == (3,) and not items.requires_grad
    torch.testing.assert_close(loss, group[f"{case}.loss"].reshape(()), rtol=1e-5, atol=0)
    torch.testing.assert_close(items, group[f"{case}.items"], rtol=1e-5, atol=1e-9)
    for grad, expected in zip(grads, level_tensors(group, f"{case}.grad"), strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-9)


def test_from_detect_matches_the_reference_head(tiny_yaml):
    group = SETS["tiny"]
    criterion = DetectionLoss.from_detect(build_model(tiny_yaml).model[-1], gains(CASES["tiny"]["hyp"]))
    torch.testing.assert_close(criterion.anchors, group["anchors"])
    assert criterion.strides == group["stride"].tolist()
    loss, _, _ = run(criterion, level_tensors(group, "predictions"), group["tiny.targets"])
    torch.testing.assert_close(loss, group["tiny.loss"].reshape(()), rtol=1e-5, atol=0)


def test_set_anchors_refreshes_the_assignment():
    group = SETS["tiny"]
    criterion = DetectionLoss(group["anchors"], group["stride"], 3, gains(CASES["tiny"]["hyp"]))
    predictions, targets = level_tensors(group, "predictions"), group["tiny.targets"]
    before = criterion(predictions, targets)[0]
    criterion.set_anchors(group["anchors"] * 3)
    assert not torch.equal(criterion(predictions, targets)[0], before)
    criterion.set_anchors(group["anchors"])
    torch.testing.assert_close(criterion(predictions, targets)[0], before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="anchors of shape"):
        criterion.set_anchors(group["anchors"][:2])


def test_empty_targets_give_only_objectness_loss():
    group = SETS["tiny"]
    criterion = DetectionLoss(group["anchors"], group["stride"], 3, gains(CASES["tiny"]["hyp"]))
    loss, items, grads = run(criterion, level_tensors(group, "predictions"), torch.zeros(0, 6))
    assert items[0] == 0 and items[2] == 0
    assert torch.isfinite(items[1]) and items[1] > 0
    torch.testing.assert_close(loss, items.sum() * 4)
    for grad in grads:
        assert torch.count_nonzero(grad[..., :4]) == 0 and torch.count_nonzero(grad[..., 5:]) == 0
        assert torch.all(grad[..., 4] > 0)  # every objectness logit is pushed down


def test_gradients_reach_exactly_the_assigned_cells():
    group = SETS["tiny"]
    criterion = DetectionLoss(group["anchors"], group["stride"], 3, gains(CASES["tiny"]["hyp"]))
    predictions, targets = level_tensors(group, "predictions"), group["tiny.targets"]
    loss, _, grads = run(criterion, predictions, targets)
    assert torch.isfinite(loss)
    assignments = build_targets(targets, [p.shape[2:4] for p in predictions], group["anchors"], 4.0)
    for grad, assigned in zip(grads, assignments, strict=True):
        assert torch.isfinite(grad).all()
        assert torch.all(grad[..., 4] != 0)  # objectness: every cell of every anchor
        assigned_mask = torch.zeros(grad.shape[:4], dtype=torch.bool)
        assigned_mask[assigned.image, assigned.anchor, assigned.cell_y, assigned.cell_x] = True
        box_and_class = torch.cat((grad[..., :4], grad[..., 5:]), -1).ne(0).any(-1)  # (B, na, H, W)
        assert torch.equal(box_and_class, assigned_mask)


def test_every_parameter_gets_a_gradient(tiny_yaml):
    model = build_model(tiny_yaml).train()
    criterion = DetectionLoss.from_detect(model.model[-1], scale_loss_gains(gains(HYP), 3, 3, 64))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [0, 2, 0.2, 0.7, 0.1, 0.1], [1, 1, 0.6, 0.4, 0.8, 0.6]])
    loss, _ = criterion(model(images), targets)
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_build_targets_takes_the_nearest_neighbour_cells():
    # one 4x4 level, one anchor of 1x1 cells: a centre at grid (1.2, 2.4) is in the left half and the top half
    # of cell (x=1, y=2), so cells (0, 2) and (1, 1) also predict it
    targets = torch.tensor([[1, 2, 0.3, 0.6, 0.25, 0.5], [0, 0, 0.5, 0.5, 0.99, 0.99]])  # second: too big (4x)
    (assigned,) = build_targets(targets, [(4, 4)], torch.ones(1, 1, 2), anchor_t=3.5)
    assert assigned.cell_x.tolist() == [1, 0, 1] and assigned.cell_y.tolist() == [2, 2, 1]
    assert assigned.image.tolist() == [1, 1, 1] and assigned.classes.tolist() == [2, 2, 2]
    torch.testing.assert_close(assigned.boxes, torch.tensor([[0.2, 0.4, 1, 2], [1.2, 0.4, 1, 2], [0.2, 1.4, 1, 2]]))


def test_build_targets_clamps_cells_on_the_border():
    # centre on the right border, grid (4.0, 2.4): its own cell x=4 is clamped to 3, and so is the box offset
    targets = torch.tensor([[0, 0, 1.0, 0.6, 0.25, 0.25]])
    (assigned,) = build_targets(targets, [(4, 4)], torch.ones(1, 1, 2), anchor_t=4.0)
    assert assigned.cell_x.tolist() == [3, 3, 3] and assigned.cell_y.tolist() == [2, 2, 1]  # own, left, above
    torch.testing.assert_close(assigned.boxes, torch.tensor([[1.0, 0.4, 1, 1], [1.0, 0.4, 1, 1], [1.0, 1.4, 1, 1]]))


def test_scale_loss_gains_hand_case():
    hyp = gains({**HYP, "label_smoothing": 0.1})
    scaled = scale_loss_gains(hyp, num_levels=4, nc=20, imgsz=1280)
    assert scaled.box == pytest.approx(0.05 * 3 / 4)  # 0.0375
    assert scaled.cls == pytest.approx(0.5 * 20 / 80 * 3 / 4)  # 0.09375
    assert scaled.obj == pytest.approx(1.0 * 4 * 3 / 4)  # 3.0
    assert {k: v for k, v in asdict(scaled).items() if k not in ("box", "cls", "obj")} == \
        {k: v for k, v in asdict(hyp).items() if k not in ("box", "cls", "obj")}
    assert hyp.box == 0.05  # the input is not modified
