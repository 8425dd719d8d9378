"""non_max_suppression and scale_boxes: parity with YOLOv5 v7.0 fixtures, and hand-made cases."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torchvision
from conftest import REFERENCE
from safetensors.torch import load_file

from yolo_accel.nms import greedy_nms, non_max_suppression, scale_boxes

TABLE = json.loads((REFERENCE / "metrics_reference.json").read_text())
INPUTS = load_file(REFERENCE / "metrics_inputs.safetensors")
EXPECTED = load_file(REFERENCE / "metrics_nms.safetensors")
NUM_IMAGES = INPUTS["prediction"].shape[0]


def row(x: float, y: float, w: float, h: float, obj: float, *class_scores: float) -> list[float]:
    return [x, y, w, h, obj, *class_scores]


@pytest.mark.parametrize("setting", list(TABLE["nms_settings"]))
def test_nms_matches_reference(setting):
    prediction = INPUTS["prediction"].clone()
    output = non_max_suppression(prediction, **TABLE["nms_settings"][setting], time_limit=math.inf)
    assert torch.equal(prediction, INPUTS["prediction"])  # input untouched
    assert len(output) == NUM_IMAGES
    for index, detections in enumerate(output):
        expected = EXPECTED[f"{setting}.{index}"]
        assert detections.shape == expected.shape, (setting, index)
        assert torch.equal(detections, expected), (setting, index)


def test_nms_with_appended_labels_matches_reference():
    hybrid = INPUTS["hybrid_labels"]
    images = int(hybrid[:, 0].max()) + 1
    labels = [hybrid[hybrid[:, 0] == index, 1:] for index in range(images)]
    output = non_max_suppression(INPUTS["prediction"][:images].clone(), **TABLE["nms_settings"]["val"],
                                 labels=labels, time_limit=math.inf)
    for index, detections in enumerate(output):
        assert torch.equal(detections, EXPECTED[f"autolabel.{index}"]), index


def test_scale_boxes_matches_reference():
    size = TABLE["size"]
    checked = 0
    for index in range(NUM_IMAGES):
        native_shape = INPUTS["native_shapes"][index].tolist()
        ratio_pad = (INPUTS["ratios"][index].tolist(), INPUTS["pads"][index].tolist())
        boxes = EXPECTED[f"val.{index}"][:, :4]
        if f"scaled.{index}" in EXPECTED:
            result = scale_boxes((size, size), boxes.clone(), native_shape, ratio_pad)
            assert torch.equal(result, EXPECTED[f"scaled.{index}"]), index
            checked += 1
        if f"scaled_auto.{index}" in EXPECTED:
            result = scale_boxes((size, size), boxes.clone(), native_shape)
            assert torch.equal(result, EXPECTED[f"scaled_auto.{index}"]), index
    assert checked == NUM_IMAGES - 1  # one image has no detections


def test_duplicate_box_is_suppressed_and_best_kept():
    prediction = torch.tensor([[row(50, 50, 20, 20, 0.6, 0.9, 0.1), row(50, 50, 20, 20, 0.9, 0.9, 0.1),
                                row(51, 50, 20, 20, 0.8, 0.9, 0.1)]])
    (detections,) = non_max_suppression(prediction)
    assert detections.shape == (1, 6)
    torch.testing.assert_close(detections[0], torch.tensor([40.0, 40.0, 60.0, 60.0, 0.81, 0.0]))


def test_class_aware_keeps_overlapping_boxes_of_different_classes_agnostic_does_not():
    prediction = torch.tensor([[row(50, 50, 20, 20, 0.9, 0.9, 0.1), row(52, 50, 20, 20, 0.8, 0.1, 0.9)]])
    (aware,) = non_max_suppression(prediction)
    (agnostic,) = non_max_suppression(prediction, agnostic=True)
    assert aware[:, 5].tolist() == [0.0, 1.0]
    assert agnostic[:, 5].tolist() == [0.0]


def test_thresholds_objectness_then_combined_confidence():
    prediction = torch.tensor([[row(20, 20, 10, 10, 0.25, 1.0, 0.0),  # obj not strictly above conf_thres
                                row(60, 20, 10, 10, 0.5, 0.4, 0.0),  # obj * cls = 0.2 below conf_thres
                                row(20, 60, 10, 10, 0.5, 0.6, 0.0)]])  # obj * cls = 0.3 kept
    (detections,) = non_max_suppression(prediction, conf_thres=0.25)
    assert detections.shape == (1, 6)
    assert detections[0, 4].item() == pytest.approx(0.3)


def test_multi_label_gives_a_row_per_class_and_class_filter():
    prediction = torch.tensor([[row(50, 50, 20, 20, 1.0, 0.9, 0.5, 0.1)]])
    (single,) = non_max_suppression(prediction)
    (multi,) = non_max_suppression(prediction, multi_label=True)
    (filtered,) = non_max_suppression(prediction, multi_label=True, classes=[1, 2])
    assert single[:, 5].tolist() == [0.0]
    assert multi[:, 5].tolist() == [0.0, 1.0]
    assert filtered[:, 5].tolist() == [1.0]
    (one_class,) = non_max_suppression(torch.tensor([[row(50, 50, 20, 20, 0.9, 0.9)]]), multi_label=True)
    assert one_class.shape == (1, 6)  # multi_label needs nc > 1


def test_max_det_and_max_nms_keep_the_most_confident():
    boxes = [row(30 * i + 15, 15, 20, 20, 0.3 + 0.01 * i, 1.0, 0.0) for i in range(20)]  # disjoint
    prediction = torch.tensor([boxes])
    (all_boxes,) = non_max_suppression(prediction)
    (top,) = non_max_suppression(prediction, max_det=5)
    (pre_limited,) = non_max_suppression(prediction, max_nms=7)
    assert len(all_boxes) == 20
    assert torch.all(all_boxes[1:, 4] <= all_boxes[:-1, 4])
    assert torch.equal(top, all_boxes[:5])
    assert torch.equal(pre_limited, all_boxes[:7])


@pytest.mark.parametrize("spread", [40.0, 400.0])  # crowded (prefix must grow) and sparse (first prefix suffices)
def test_greedy_nms_on_a_prefix_equals_nms_over_everything(spread):
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(6000, 2, generator=generator) * spread
    boxes = torch.cat((xy, xy + 5 + torch.rand(6000, 2, generator=generator) * 30), 1)
    scores = torch.rand(6000, generator=generator).sort(descending=True).values
    everything = torchvision.ops.nms(boxes, scores, 0.5)
    assert len(everything) > 300
    for max_det in (1, 300, 10000):
        assert torch.equal(greedy_nms(boxes, scores, 0.5, max_det), everything[:max_det])


def test_appended_labels_become_confidence_one_detections():
    prediction = torch.tensor([[row(50, 50, 20, 20, 0.01, 0.5, 0.5)]])
    (detections,) = non_max_suppression(prediction, labels=[torch.tensor([[1.0, 150, 150, 10, 20]])])
    assert detections.tolist() == [[145.0, 140.0, 155.0, 160.0, 1.0, 1.0]]


def test_empty_images_give_empty_outputs():
    prediction = torch.zeros(3, 10, 7)
    prediction[1, 0] = torch.tensor(row(50, 50, 20, 20, 0.9, 0.9, 0.0))
    output = non_max_suppression(prediction)
    assert [tuple(d.shape) for d in output] == [(0, 6), (1, 6), (0, 6)]


def test_time_limit_stops_with_a_warning(caplog):
    prediction = torch.tensor([[row(50, 50, 20, 20, 0.9, 0.9, 0.1)]] * 3)
    with caplog.at_level(logging.WARNING, logger="yolo_accel.nms"):
        output = non_max_suppression(prediction, time_limit=0.0)
    assert "time limit" in caplog.text
    assert [len(d) for d in output] == [1, 0, 0]


def test_scale_boxes_inverts_a_letterbox_exactly():
    native_shape, letterbox_shape = (320, 160), (640, 640)  # gain 2, 160 px padding left and right
    native = torch.tensor([[10.0, 20.0, 110.0, 220.0], [0.0, 0.0, 160.0, 320.0], [3.5, 7.25, 9.0, 11.0]])
    letterboxed = native * 2 + torch.tensor([160.0, 0.0, 160.0, 0.0])
    restored = scale_boxes(letterbox_shape, letterboxed.clone(), native_shape)
    assert torch.equal(restored, native)
    explicit = scale_boxes(letterbox_shape, letterboxed.clone(), native_shape, ((2.0, 2.0), (160.0, 0.0)))
    assert torch.equal(explicit, native)


def test_scale_boxes_clips_in_place():
    boxes = torch.tensor([[100.0, -10.0, 900.0, 300.0, 0.5, 1.0]])
    result = scale_boxes((640, 640), boxes, (320, 160))
    assert result is boxes
    assert boxes.tolist() == [[0.0, 0.0, 160.0, 150.0, 0.5, 1.0]]  # extra columns untouched
