"""Detection metrics: parity with YOLOv5 v7.0 fixtures (make_metrics_fixtures.py) and hand-made cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import REFERENCE
from safetensors.torch import load_file

from yolo_accel.metrics import (
    ConfusionMatrix,
    DetectionStats,
    ap_per_class,
    compute_detection_metrics,
    fitness,
    match_predictions,
    smooth,
)
from yolo_accel.nms import non_max_suppression, scale_boxes

TABLE = json.loads((REFERENCE / "metrics_reference.json").read_text())
INPUTS = load_file(REFERENCE / "metrics_inputs.safetensors")
NMS = load_file(REFERENCE / "metrics_nms.safetensors")
AP = load_file(REFERENCE / "metrics_ap.safetensors")
NUM_IMAGES = INPUTS["prediction"].shape[0]
NUM_CLASSES = TABLE["num_classes"]
ATOL = 1e-6


def image_labels(index: int) -> torch.Tensor:
    labels = INPUTS["labels"]
    return labels[labels[:, 0] == index, 1:]


def reference_native_detections(index: int) -> torch.Tensor:
    """The reference val-setting detections of one image, in native pixels."""
    detections = NMS[f"val.{index}"].clone()
    if len(detections):
        detections[:, :4] = NMS[f"scaled.{index}"]
    return detections


def assert_close(actual, expected, atol: float = ATOL) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


def test_match_predictions_matches_reference():
    compared = 0
    for index in range(NUM_IMAGES):
        labels = image_labels(index)
        if f"correct.{index}" not in NMS or not len(labels):
            continue
        correct = match_predictions(reference_native_detections(index), labels)
        assert correct.dtype == torch.bool
        assert torch.equal(correct, NMS[f"correct.{index}"]), index
        compared += 1
    assert compared >= NUM_IMAGES - 2


@pytest.mark.parametrize("case", ["val", "random"])
def test_ap_per_class_matches_reference(case):
    if case == "val":
        stats = DetectionStats(NUM_CLASSES)
        for index in range(NUM_IMAGES):
            stats.add_image(reference_native_detections(index), image_labels(index))
        inputs = stats.concatenate()
    else:
        inputs = [AP[f"random_input.{key}"] for key in ("tp", "conf", "pred_cls", "target_cls")]
    result = ap_per_class(*inputs)
    expected = {key.split(".", 1)[1]: value.numpy() for key, value in AP.items() if key.startswith(f"{case}.")}
    assert result.classes.tolist() == expected["classes"].tolist()
    for field in ("tp", "fp", "precision", "recall", "f1", "ap", "curve_x", "precision_curve", "recall_curve",
                  "f1_curve"):
        assert_close(getattr(result, field), expected[field])
    has_predictions = np.isin(result.classes, inputs[2].numpy())
    assert_close(result.pr_curve[has_predictions], expected["pr_curve"])  # the reference keeps only these rows
    assert not result.pr_curve[~has_predictions].any()


def test_detection_stats_chain_matches_reference_val():
    """Our NMS, scale_boxes, matching and summary chained as val.py does, against the reference summary."""
    size = TABLE["size"]
    stats = DetectionStats(NUM_CLASSES)
    confusion = ConfusionMatrix(NUM_CLASSES)
    settings = TABLE["nms_settings"]["val"]
    for index, detections in enumerate(non_max_suppression(INPUTS["prediction"], **settings, time_limit=math.inf)):
        labels = image_labels(index)
        ratio_pad = (INPUTS["ratios"][index].tolist(), INPUTS["pads"][index].tolist())
        native = detections.clone()
        scale_boxes((size, size), native[:, :4], INPUTS["native_shapes"][index].tolist(), ratio_pad)
        stats.add_image(native, labels)
        if len(labels):
            confusion.process_batch(native if len(native) else None, labels)
    summary = TABLE["summary"]
    metrics = stats.compute()
    assert stats.images_seen == NUM_IMAGES
    assert_close(metrics.results(), [summary[key] for key in ("mean_precision", "mean_recall", "map50", "map50_95")])
    assert metrics.classes.tolist() == summary["classes"]
    for field in ("precision", "recall", "ap50", "ap", "class_maps"):
        assert_close(getattr(metrics, field), summary[field])
    assert metrics.targets_per_class.tolist() == summary["targets_per_class"]
    losses = (0.05, 0.02, 0.01)  # the generator appends these to the results, as train.py does
    assert_close(fitness(np.array([*metrics.results(), *losses])), summary["fitness"])
    assert confusion.matrix.tolist() == TABLE["confusion"]["matrix"]


@pytest.mark.parametrize("name", ["confusion", "confusion_loose"])
def test_confusion_matrix_matches_reference(name):
    settings = TABLE[name]
    confusion = ConfusionMatrix(NUM_CLASSES, conf=settings.get("conf", 0.25), iou_thres=settings.get("iou_thres", 0.45))
    for index in range(NUM_IMAGES):
        labels = image_labels(index)
        if not len(labels):
            continue  # val.py only counts images with labels
        detections = reference_native_detections(index)
        confusion.process_batch(detections if len(detections) else None, labels)
    assert confusion.matrix.shape == (NUM_CLASSES + 1, NUM_CLASSES + 1)
    assert confusion.matrix.tolist() == settings["matrix"]
    if name == "confusion":
        tp, fp = confusion.tp_fp()
        assert tp.tolist() == settings["tp"] and fp.tolist() == settings["fp"]


def test_fitness_matches_reference():
    inputs = np.array(TABLE["fitness"]["inputs"])
    assert_close(fitness(inputs), TABLE["fitness"]["outputs"])
    assert fitness((0.5, 0.5, 0.6, 0.4)) == pytest.approx(0.1 * 0.6 + 0.9 * 0.4)


def test_perfect_predictions_give_ap_0995():
    result = ap_per_class(np.ones((3, 10), dtype=bool), np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(3))
    assert result.ap.tolist() == TABLE["perfect_ap"]
    assert result.ap == pytest.approx(np.full((1, 10), 0.995), abs=1e-12)  # the recall-1 sentinel costs 0.005
    assert result.precision.tolist() == [1.0] and result.recall.tolist() == [1.0]
    assert result.tp.tolist() == [3.0] and result.fp.tolist() == [0.0]


def test_no_predictions_give_zero():
    empty = ap_per_class(np.zeros((0, 10), dtype=bool), np.zeros(0), np.zeros(0), np.array([0.0, 1.0, 1.0]))
    assert empty.classes.tolist() == [0, 1]
    assert not empty.ap.any() and not empty.precision.any() and not empty.recall.any()

    stats = DetectionStats(2)
    stats.add_image(torch.zeros(0, 6), torch.tensor([[0.0, 10, 10, 20, 20], [1.0, 30, 30, 40, 40]]))
    stats.add_image(torch.zeros(0, 6), torch.zeros(0, 5))
    metrics = stats.compute()
    assert metrics.results() == (0.0, 0.0, 0.0, 0.0)
    assert metrics.targets_per_class.tolist() == [1, 1]
    assert metrics.details is None and len(metrics.classes) == 0
    assert stats.images_seen == 2
    assert DetectionStats(3).compute().results() == (0.0, 0.0, 0.0, 0.0)


def test_match_predictions_needs_the_same_class_and_enough_iou():
    labels = torch.tensor([[0.0, 0, 0, 10, 10]])
    detections = torch.tensor([[0.0, 0, 10, 10, 0.9, 1.0],  # right box, wrong class
                               [0.0, 0, 10, 6.2, 0.8, 0.0]])  # IoU 0.62
    correct = match_predictions(detections, labels)
    assert not correct[0].any()
    assert correct[1].tolist() == [True, True, True] + [False] * 7


def test_match_predictions_one_detection_per_label_by_index_order():
    labels = torch.tensor([[0.0, 0, 0, 10, 10]])
    detections = torch.tensor([[0.0, 0, 10, 6, 0.9, 0.0],  # IoU 0.6, higher confidence
                               [0.0, 0, 10, 9, 0.8, 0.0]])  # IoU 0.9
    correct = match_predictions(detections, labels, torch.tensor([0.5, 0.7]))
    # yolov5 parity: at 0.5 the label keeps the first detection, not the one with the higher IoU
    assert correct.tolist() == [[True, False], [False, True]]


def test_confusion_matrix_counts_background():
    labels = torch.tensor([[0.0, 0, 0, 10, 10],  # found as class 0
                           [1.0, 50, 50, 60, 60]])  # missed
    detections = torch.tensor([[0.0, 0, 10, 10, 0.9, 0.0],
                               [80.0, 80, 90, 90, 0.9, 1.0],  # nothing there
                               [50.0, 50, 60, 60, 0.1, 1.0]])  # below the confidence threshold
    confusion = ConfusionMatrix(nc=2)
    confusion.process_batch(detections, labels)
    assert confusion.matrix.tolist() == [[1, 0, 0],
                                         [0, 0, 1],  # background FP
                                         [0, 1, 0]]  # background FN
    confusion.process_batch(None, torch.tensor([[1.0, 5, 5, 9, 9]]))
    assert confusion.matrix[2, 1] == 2
    tp, fp = confusion.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [0, 1]


def test_confusion_matrix_skips_false_positives_when_nothing_matches():
    confusion = ConfusionMatrix(nc=2)
    confusion.process_batch(torch.tensor([[80.0, 80, 90, 90, 0.9, 1.0]]), torch.tensor([[0.0, 0, 0, 10, 10]]))
    # yolov5 parity: the unmatched detection is not counted when no detection in the image matched
    assert confusion.matrix.tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_smooth_keeps_length_and_constants():
    values = np.linspace(0, 1, 1000)
    assert smooth(values, 0.1).shape == values.shape
    assert_close(smooth(np.full(50, 0.3)), np.full(50, 0.3), atol=1e-15)


def test_compute_detection_metrics_accepts_numpy_and_tensors():
    correct = torch.tensor([[True, False], [False, False]])
    conf, pred_cls, target_cls = torch.tensor([0.9, 0.8]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0])
    from_tensors = compute_detection_metrics(correct, conf, pred_cls, target_cls, num_classes=3)
    from_numpy = compute_detection_metrics(correct.numpy(), conf.numpy(), pred_cls.numpy(), target_cls.numpy(), 3)
    assert from_tensors.results() == from_numpy.results()
    assert from_tensors.classes.tolist() == [0, 2]
    assert from_tensors.ap50.tolist() == [pytest.approx(0.995), 0.0]
    assert from_tensors.class_maps.shape == (3,)
