"""Non-maximum suppression and the letterbox inverse, with YOLOv5 v7.0 semantics."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torchvision

from yolo_accel.boxes import clip_boxes, xywh_to_xyxy

logger = logging.getLogger(__name__)

MAX_WH = 7680  # pixels: class offset for batched NMS, larger than any box coordinate
MAX_NMS = 30000  # most boxes handed to torchvision.ops.nms per image


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    labels: Sequence[torch.Tensor] = (),
    max_det: int = 300,
    max_nms: int = MAX_NMS,
    time_limit: float | None = None,
    objectness: bool = True,
) -> list[torch.Tensor]:
    """Filter decoded predictions to detections per image.

    Args:
        prediction: (B, N, 5 + nc) decoded model output: [x, y, w, h] in pixels, objectness, class scores; with
            `objectness=False` (anchor-free YOLOv5u models) (B, N, 4 + nc), the class scores alone.
            A (output, train_output) pair from a model in eval mode is accepted too.
        conf_thres: candidates need objectness above it, and detections need obj * cls above it.
        iou_thres: IoU above which torchvision NMS suppresses a lower-scoring box of the same class.
        classes: keep only detections of these class ids.
        agnostic: suppress across classes (no class offset).
        multi_label: one detection per (box, class) pair whose score passes conf_thres; needs nc > 1.
        labels: per image (m, 5) [cls, x, y, w, h] in pixels, appended as detections of confidence 1
            (autolabelling); empty to skip.
        max_det: most detections kept per image.
        max_nms: most boxes, by confidence, that enter NMS per image.
        time_limit: seconds after which the remaining images are skipped with a warning;
            None uses the YOLOv5 default 0.5 + 0.05 * B, math.inf never stops.

    Returns:
        B tensors (n, 6) [x1, y1, x2, y2, conf, cls], sorted by decreasing conf.
    """
    assert 0 <= conf_thres <= 1, f"invalid confidence threshold {conf_thres}, valid values are in [0, 1]"
    assert 0 <= iou_thres <= 1, f"invalid IoU threshold {iou_thres}, valid values are in [0, 1]"
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]

    device = prediction.device
    if device.type == "mps":  # torchvision NMS is not fully supported on MPS
        prediction = prediction.cpu()
    batch_size = prediction.shape[0]
    first = 5 if objectness else 4  # column of the first class score
    num_classes = prediction.shape[2] - first
    # candidates: objectness above the threshold, or (no objectness) some class score above it
    candidates = (prediction[..., 4] if objectness else prediction[..., 4:].amax(-1)) > conf_thres  # (B, N)
    multi_label = multi_label and num_classes > 1
    if time_limit is None:
        time_limit = 0.5 + 0.05 * batch_size

    start = time.time()
    output = [torch.zeros((0, 6), device=device) for _ in range(batch_size)]
    for image_index, image_prediction in enumerate(prediction):
        rows = image_prediction[candidates[image_index]]  # (n, 5 + nc), a copy

        if labels and len(labels[image_index]):
            image_labels = labels[image_index]
            prior = torch.zeros((len(image_labels), num_classes + first), device=rows.device)
            prior[:, :4] = image_labels[:, 1:5]
            prior[:, 4] = 1.0
            prior[range(len(image_labels)), image_labels[:, 0].long() + first] = 1.0
            rows = torch.cat((rows, prior), 0)

        if not rows.shape[0]:
            continue

        if objectness:
            rows[:, 5:] *= rows[:, 4:5]  # conf = obj * cls
        boxes_xyxy = xywh_to_xyxy(rows[:, :4])

        if multi_label:
            box_index, class_index = (rows[:, first:] > conf_thres).nonzero(as_tuple=False).T
            detections = torch.cat((boxes_xyxy[box_index], rows[box_index, first + class_index, None],
                                    class_index[:, None].float()), 1)  # (n, 6)
        else:
            conf, class_index = rows[:, first:].max(1, keepdim=True)
            detections = torch.cat((boxes_xyxy, conf, class_index.float()), 1)[conf.view(-1) > conf_thres]

        if classes is not None:
            detections = detections[(detections[:, 5:6] == torch.tensor(classes, device=detections.device)).any(1)]

        if not detections.shape[0]:
            continue
        detections = detections[detections[:, 4].argsort(descending=True)[:max_nms]]

        offsets = detections[:, 5:6] * (0 if agnostic else MAX_WH)  # separate classes in coordinate space
        keep = greedy_nms(detections[:, :4] + offsets, detections[:, 4], iou_thres, max_det)
        output[image_index] = detections[keep].to(device)
        if time.time() - start > time_limit:
            logger.warning("NMS time limit %.3fs exceeded", time_limit)
            break

    return output


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, max_det: int) -> torch.Tensor:
    """The first `max_det` indices that torchvision NMS keeps, for boxes already sorted by decreasing score.

    Greedy NMS decides each box from the higher-scoring boxes alone, so NMS over the first k boxes keeps exactly
    the boxes that NMS over all of them keeps among those k. Running it on a growing prefix until `max_det` boxes
    are kept gives the same detections as one run over everything, at a fraction of the cost when thousands of
    low-confidence candidates (conf 0.001 in validation) would never make the cut.
    """
    n = len(boxes)
    k = min(n, 4 * max_det)
    while True:
        keep = torchvision.ops.nms(boxes[:k], scores[:k], iou_thres)
        if len(keep) >= max_det or k == n:
            return keep[:max_det]
        k = min(n, 4 * k)


def scale_boxes(
    img1_shape: Sequence[int],
    boxes_xyxy: torch.Tensor,
    img0_shape: Sequence[int],
    ratio_pad: tuple[Sequence[float], Sequence[float]] | None = None,
) -> torch.Tensor:
    """Map xyxy boxes from a letterboxed image back to the original image, in place; returns them.

    Args:
        img1_shape: (height, width) of the letterboxed image the boxes are in.
        boxes_xyxy: (..., >=4) boxes, first four columns x1, y1, x2, y2 in img1 pixels.
        img0_shape: (height, width) of the original image; boxes are clipped to it.
        ratio_pad: ((gain, gain), (pad_w, pad_h)) as recorded by the letterbox; None derives them
            from the two shapes assuming a centred letterbox.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]  # yolov5 parity: one gain for both axes
        pad = ratio_pad[1]

    boxes_xyxy[..., [0, 2]] -= pad[0]
    boxes_xyxy[..., [1, 3]] -= pad[1]
    boxes_xyxy[..., :4] /= gain
    clip_boxes(boxes_xyxy, img0_shape)
    return boxes_xyxy
