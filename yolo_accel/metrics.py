"""Detection metrics with YOLOv5 v7.0 semantics: matching, AP per class, fitness, confusion matrix.

Pure computations, no plotting and no distributed code: curves are returned for plots.py, and
DetectionStats exposes its concatenated tensors so a caller can gather them across processes first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from yolo_accel.boxes import box_iou

FITNESS_WEIGHTS = (0.0, 0.0, 0.1, 0.9)  # over [P, R, mAP50, mAP50-95]
CURVE_POINTS = 1000  # resolution of the confidence and recall axes of the curves

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 only has trapz


def coco_iou_thresholds(device: torch.device | str | None = None) -> torch.Tensor:
    """The ten IoU thresholds 0.50:0.05:0.95 of mAP50-95, (10,) float32."""
    return torch.linspace(0.5, 0.95, 10, device=device)


def _to_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def match_predictions(
    detections: torch.Tensor, labels: torch.Tensor, iou_thresholds: torch.Tensor | None = None
) -> torch.Tensor:
    """Which detections are true positives at each IoU threshold.

    Each label matches at most one detection and each detection at most one label, of the same class
    and with IoU >= threshold; the matching is greedy by IoU (val.py process_batch).

    Args:
        detections: (n, 6) [x1, y1, x2, y2, conf, cls], in the same pixel space as the labels.
        labels: (m, 5) [cls, x1, y1, x2, y2].
        iou_thresholds: (T,) thresholds; default the ten COCO thresholds.

    Returns:
        (n, T) bool, on the device of iou_thresholds.
    """
    if iou_thresholds is None:
        iou_thresholds = coco_iou_thresholds(detections.device)
    correct = np.zeros((detections.shape[0], iou_thresholds.shape[0]), dtype=bool)
    iou = box_iou(labels[:, 1:], detections[:, :4])  # (m, n)
    same_class = labels[:, 0:1] == detections[:, 5]  # (m, n)
    for threshold_index, threshold in enumerate(iou_thresholds):
        label_index, detection_index = torch.where((iou >= threshold) & same_class)
        if not label_index.shape[0]:
            continue
        iou_values = iou[label_index, detection_index].cpu().numpy()
        label_index, detection_index = label_index.cpu().numpy(), detection_index.cpu().numpy()
        order = iou_values.argsort()[::-1]
        label_index, detection_index = label_index[order], detection_index[order]
        first = np.unique(detection_index, return_index=True)[1]  # each detection keeps its best label
        label_index, detection_index = label_index[first], detection_index[first]
        # yolov5 parity: no re-sort by IoU here, so a label keeps its lowest-index (highest conf) detection
        first = np.unique(label_index, return_index=True)[1]
        correct[detection_index[first], threshold_index] = True
    return torch.tensor(correct, dtype=torch.bool, device=iou_thresholds.device)


def smooth(values: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Box filter spanning `fraction` of the curve, edges padded with the end values; same length out."""
    width = round(len(values) * fraction * 2) // 2 + 1  # odd
    padding = np.ones(width // 2)
    padded = np.concatenate((padding * values[0], values, padding * values[-1]), 0)
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Area under the precision envelope by 101-point interpolation (COCO).

    Args:
        recall: (n,) recall after each prediction, by decreasing confidence.
        precision: (n,) precision after each prediction.

    Returns:
        ap, the precision envelope (n + 2,), and the recall with its 0 and 1 sentinels (n + 2,).
    """
    recall_points = np.concatenate(([0.0], recall, [1.0]))
    envelope = np.concatenate(([1.0], precision, [0.0]))
    envelope = np.flip(np.maximum.accumulate(np.flip(envelope)))
    x = np.linspace(0, 1, 101)
    # yolov5 parity: the sentinel precision 0 at recall 1 costs a perfect detector 0.005 (AP 0.995)
    ap = _trapezoid(np.interp(x, recall_points, envelope), x)
    return ap, envelope, recall_points


@dataclass(frozen=True)
class ClassMetrics:
    """ap_per_class results for the k classes present in the targets.

    tp, fp, precision, recall, f1 are (k,) at the confidence where the smoothed mean F1 peaks; ap is (k, T).
    Curves are (k, CURVE_POINTS) over curve_x = linspace(0, 1, CURVE_POINTS): precision_curve,
    recall_curve and f1_curve against confidence, pr_curve the precision envelope against recall at
    the first IoU threshold. Classes without predictions keep zero rows (all-zero ap and curves).
    """

    tp: np.ndarray
    fp: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    classes: np.ndarray
    curve_x: np.ndarray
    precision_curve: np.ndarray
    recall_curve: np.ndarray
    f1_curve: np.ndarray
    pr_curve: np.ndarray
    best_index: int


def ap_per_class(
    tp: torch.Tensor | np.ndarray,
    conf: torch.Tensor | np.ndarray,
    pred_cls: torch.Tensor | np.ndarray,
    target_cls: torch.Tensor | np.ndarray,
    eps: float = 1e-16,
) -> ClassMetrics:
    """Precision, recall, F1 and AP per class (YOLOv5 v7.0 ap_per_class).

    Args:
        tp: (n, T) or (n,) bool, true positive per prediction and IoU threshold.
        conf: (n,) prediction confidence.
        pred_cls: (n,) predicted class.
        target_cls: (m,) class of every target.
    """
    tp, conf, pred_cls, target_cls = (_to_numpy(x) for x in (tp, conf, pred_cls, target_cls))
    if tp.ndim == 1:
        tp = tp[:, None]
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]

    classes, label_counts = np.unique(target_cls, return_counts=True)
    num_classes = classes.shape[0]
    curve_x = np.linspace(0, 1, CURVE_POINTS)
    ap = np.zeros((num_classes, tp.shape[1]))
    precision_curve, recall_curve, pr_curve = (np.zeros((num_classes, CURVE_POINTS)) for _ in range(3))
    for class_index, class_id in enumerate(classes):
        is_class = pred_cls == class_id
        num_labels, num_predictions = label_counts[class_index], is_class.sum()
        if num_predictions == 0 or num_labels == 0:
            continue

        fp_cumulative = (1 - tp[is_class]).cumsum(0)  # (p, T)
        tp_cumulative = tp[is_class].cumsum(0)
        recall = tp_cumulative / (num_labels + eps)
        precision = tp_cumulative / (tp_cumulative + fp_cumulative)
        # confidence decreases along the predictions, so interpolate on negated axes
        recall_curve[class_index] = np.interp(-curve_x, -conf[is_class], recall[:, 0], left=0)
        precision_curve[class_index] = np.interp(-curve_x, -conf[is_class], precision[:, 0], left=1)

        for threshold_index in range(tp.shape[1]):
            ap[class_index, threshold_index], envelope, recall_points = compute_ap(
                recall[:, threshold_index], precision[:, threshold_index])
            if threshold_index == 0:
                pr_curve[class_index] = np.interp(curve_x, recall_points, envelope)

    f1_curve = 2 * precision_curve * recall_curve / (precision_curve + recall_curve + eps)
    mean_f1 = f1_curve.mean(0) if num_classes else np.zeros(CURVE_POINTS)
    best_index = int(smooth(mean_f1, 0.1).argmax())
    precision, recall, f1 = precision_curve[:, best_index], recall_curve[:, best_index], f1_curve[:, best_index]
    tp_count = (recall * label_counts).round()
    fp_count = (tp_count / (precision + eps) - tp_count).round()
    return ClassMetrics(tp=tp_count, fp=fp_count, precision=precision, recall=recall, f1=f1, ap=ap,
                        classes=classes.astype(int), curve_x=curve_x, precision_curve=precision_curve,
                        recall_curve=recall_curve, f1_curve=f1_curve, pr_curve=pr_curve, best_index=best_index)


def fitness(results: np.ndarray | torch.Tensor | tuple[float, ...]) -> np.ndarray:
    """Weighted score 0.1 * mAP50 + 0.9 * mAP50-95 of results (..., >=4) [P, R, mAP50, mAP50-95, ...]; (...)."""
    return (_to_numpy(results)[..., :4] * np.array(FITNESS_WEIGHTS)).sum(-1)


@dataclass(frozen=True)
class DetectionMetrics:
    """Validation summary as val.py reports it.

    Means are over the classes present in the targets. classes (k,) with per-class precision, recall,
    ap50 and ap (mean over the IoU thresholds), empty when nothing was matched; targets_per_class and
    class_maps are (nc,), class_maps holding mAP50-95 for classes without a row. details is None when
    there was nothing to compute.
    """

    mean_precision: float
    mean_recall: float
    map50: float
    map50_95: float
    classes: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    ap50: np.ndarray
    ap: np.ndarray
    targets_per_class: np.ndarray
    class_maps: np.ndarray
    details: ClassMetrics | None

    def results(self) -> tuple[float, float, float, float]:
        """(P, R, mAP50, mAP50-95), the order fitness expects."""
        return self.mean_precision, self.mean_recall, self.map50, self.map50_95


def compute_detection_metrics(
    correct: torch.Tensor | np.ndarray,
    conf: torch.Tensor | np.ndarray,
    pred_cls: torch.Tensor | np.ndarray,
    target_cls: torch.Tensor | np.ndarray,
    num_classes: int,
) -> DetectionMetrics:
    """Summary metrics from the predictions and targets of a whole dataset.

    Args:
        correct: (n, T) bool from match_predictions, all images concatenated.
        conf: (n,) detection confidence.
        pred_cls: (n,) detection class.
        target_cls: (m,) class of every label.
        num_classes: nc of the dataset, for the per-class arrays.
    """
    correct, conf, pred_cls, target_cls = (_to_numpy(x) for x in (correct, conf, pred_cls, target_cls))
    targets_per_class = np.bincount(target_cls.astype(int), minlength=num_classes)
    empty = np.zeros(0)
    if not correct.any():  # yolov5 parity: all metrics stay 0 without a single true positive
        return DetectionMetrics(0.0, 0.0, 0.0, 0.0, np.zeros(0, dtype=int), empty, empty, empty, empty,
                                targets_per_class, np.zeros(num_classes), None)
    details = ap_per_class(correct, conf, pred_cls, target_cls)
    ap50, ap = details.ap[:, 0], details.ap.mean(1)
    map50_95 = float(ap.mean())
    class_maps = np.zeros(num_classes) + map50_95
    class_maps[details.classes] = ap
    return DetectionMetrics(mean_precision=float(details.precision.mean()), mean_recall=float(details.recall.mean()),
                            map50=float(ap50.mean()), map50_95=map50_95, classes=details.classes,
                            precision=details.precision, recall=details.recall, ap50=ap50, ap=ap,
                            targets_per_class=targets_per_class, class_maps=class_maps, details=details)


class DetectionStats:
    """Collects per-image matching results; compute() gives the dataset metrics.

    Images are added in any order; concatenate() returns the four stacked tensors for gathering
    across processes before compute_detection_metrics.
    """

    def __init__(self, num_classes: int, iou_thresholds: torch.Tensor | None = None) -> None:
        self.num_classes = num_classes
        self.iou_thresholds = coco_iou_thresholds() if iou_thresholds is None else iou_thresholds
        self.images_seen = 0
        self._records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, correct: torch.Tensor, conf: torch.Tensor, pred_cls: torch.Tensor,
               target_cls: torch.Tensor) -> None:
        """Record one image: correct (n, T) bool, conf (n,), pred_cls (n,), target_cls (m,)."""
        self.images_seen += 1
        self._records.append((correct.detach(), conf.detach(), pred_cls.detach(), target_cls.detach()))

    def add_image(self, detections: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Match and record one image: detections (n, 6) [xyxy, conf, cls], labels (m, 5) [cls, xyxy].

        Both in the same (native) pixel space; returns correct (n, T).
        """
        thresholds = self.iou_thresholds.to(detections.device)
        if len(labels) and len(detections):
            correct = match_predictions(detections, labels, thresholds)
        else:
            correct = torch.zeros(len(detections), len(thresholds), dtype=torch.bool, device=detections.device)
        self.update(correct, detections[:, 4], detections[:, 5], labels[:, 0])
        return correct

    def concatenate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(correct (n, T), conf (n,), pred_cls (n,), target_cls (m,)) over all recorded images."""
        if not self._records:
            return (torch.zeros(0, len(self.iou_thresholds), dtype=torch.bool), torch.zeros(0), torch.zeros(0),
                    torch.zeros(0))
        return tuple(torch.cat(column, 0) for column in zip(*self._records))

    def compute(self) -> DetectionMetrics:
        return compute_detection_metrics(*self.concatenate(), num_classes=self.num_classes)


class ConfusionMatrix:
    """Detection confusion matrix (nc + 1, nc + 1): rows predicted class, columns true class.

    Index nc is background: row nc counts missed labels (FN), column nc detections with no label (FP).
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Count one image.

        Args:
            detections: (n, 6) [x1, y1, x2, y2, conf, cls], or None when the image has none.
            labels: (m, 5) [cls, x1, y1, x2, y2] in the same space; with detections None a (m,)
                tensor of classes is enough.
        """
        if detections is None:
            label_classes = labels[:, 0] if labels.ndim == 2 else labels
            for label_class in label_classes.int().tolist():
                self.matrix[self.nc, label_class] += 1
            return

        detections = detections[detections[:, 4] > self.conf]
        label_classes = labels[:, 0].int().tolist()
        detection_classes = detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:], detections[:, :4])  # (m, n)

        label_index, detection_index = torch.where(iou > self.iou_thres)
        iou_values = iou[label_index, detection_index].cpu().numpy()
        label_index, detection_index = label_index.cpu().numpy(), detection_index.cpu().numpy()
        if len(label_index) > 1:
            order = iou_values.argsort()[::-1]
            label_index, detection_index, iou_values = label_index[order], detection_index[order], iou_values[order]
            first = np.unique(detection_index, return_index=True)[1]
            label_index, detection_index, iou_values = label_index[first], detection_index[first], iou_values[first]
            order = iou_values.argsort()[::-1]
            label_index, detection_index = label_index[order], detection_index[order]
            first = np.unique(label_index, return_index=True)[1]
            label_index, detection_index = label_index[first], detection_index[first]

        any_match = len(label_index) > 0
        for index, label_class in enumerate(label_classes):
            matched = detection_index[label_index == index]
            if any_match and len(matched) == 1:
                self.matrix[detection_classes[matched[0]], label_class] += 1
            else:
                self.matrix[self.nc, label_class] += 1  # missed: background FN

        # yolov5 parity: with no match at all in the image, its detections are not counted as background FP
        if any_match:
            for index, detection_class in enumerate(detection_classes):
                if not (detection_index == index).any():
                    self.matrix[detection_class, self.nc] += 1

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives per class (nc,), background excluded."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]
