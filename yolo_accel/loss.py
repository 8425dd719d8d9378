"""YOLOv5 v7.0 detection loss: target assignment (`build_targets`), then CIoU box, objectness and class terms.

Targets are rows (image index in batch, class, x, y, w, h) with boxes normalised to the image. Each target is
assigned to every (level, anchor) whose width and height ratios to the anchor stay under `anchor_t`, in its own
grid cell and in the two neighbouring cells nearest its centre. Predictions are the Detect head's raw train-mode
maps (B, na, H, W, 5 + nc): xy offsets, wh, objectness and class logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .boxes import bbox_iou
from .config import LossHyp

LEVEL_BALANCE_P5 = (4.0, 1.0, 0.4)  # objectness weight per level, P3-P5: small-object levels count more
LEVEL_BALANCE_OTHER = (4.0, 1.0, 0.25, 0.06, 0.02)  # P3-P7, used for any model without exactly 3 levels
NEIGHBOUR_BIAS = 0.5  # a centre within this fraction of a cell's edge also claims the cell across that edge
FOCAL_ALPHA = 0.25


def scale_loss_gains(gains: LossHyp, num_levels: int, nc: int, imgsz: int) -> LossHyp:
    """The box/cls/obj gains rescaled as YOLOv5's train.py does before building the loss.

    The hyp files are tuned for 3 levels, 80 classes and 640 px images; the gains follow the number of levels,
    the number of classes (cls) and the image area (obj).
    """
    return replace(gains, box=gains.box * 3 / num_levels, cls=gains.cls * nc / 80 * 3 / num_levels,
                   obj=gains.obj * (imgsz / 640) ** 2 * 3 / num_levels)


@dataclass
class LevelTargets:
    """The n (target, anchor, cell) assignments of one level; every field has n rows."""

    image: torch.Tensor  # (n,) long, image index in the batch
    anchor: torch.Tensor  # (n,) long, anchor index within the level
    cell_y: torch.Tensor  # (n,) long, grid row
    cell_x: torch.Tensor  # (n,) long, grid column
    boxes: torch.Tensor  # (n, 4) x, y relative to the cell's top-left corner, w, h; grid units
    anchors_wh: torch.Tensor  # (n, 2) the assigned anchor's w, h in grid units
    classes: torch.Tensor  # (n,) long

    def __len__(self) -> int:
        return self.image.shape[0]


def build_targets(targets: torch.Tensor, grid_shapes: Sequence[tuple[int, int]], anchors: torch.Tensor,
                  anchor_t: float) -> list[LevelTargets]:
    """Assign targets (N, 6) = (image, class, x, y, w, h normalised) to anchors and cells of every level.

    grid_shapes: (H, W) of each level's map; anchors: (nl, na, 2) in grid units of each level.
    The order of the assignments matches YOLOv5's build_targets (anchor-major, then own cell before neighbours),
    which matters where two assignments share a cell: the later one sets the objectness target.
    """
    num_anchors, num_targets = anchors.shape[1], targets.shape[0]
    device, dtype = targets.device, targets.dtype
    anchor_index = torch.arange(num_anchors, device=device, dtype=dtype).view(num_anchors, 1, 1)
    # (na, N, 7): every target once per anchor, tagged with that anchor's index
    candidates = torch.cat((targets.expand(num_anchors, num_targets, 6),
                            anchor_index.expand(num_anchors, num_targets, 1)), 2)
    # own cell, then the neighbours to the left, above, to the right and below (as xy shifts of the centre)
    shifts = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device, dtype=dtype) * NEIGHBOUR_BIAS

    assignments = []
    for level, (height, width) in enumerate(grid_shapes):
        size_xy = torch.tensor([width, height], device=device, dtype=dtype)
        level_candidates = candidates.clone()
        level_candidates[..., 2:6] *= size_xy.repeat(2)  # normalised xywh -> grid units

        ratio = level_candidates[..., 4:6] / anchors[level][:, None]  # (na, N, 2)
        matched = torch.max(ratio, 1 / ratio).max(2).values < anchor_t  # (na, N)
        chosen = level_candidates[matched]  # (M, 7)

        centre_xy = chosen[:, 2:4]
        centre_from_far_side = size_xy - centre_xy
        # yolov5 parity: a centre in the first (last) column or row never takes the neighbour before (after) it,
        # even when that neighbour exists
        near_low = (centre_xy % 1 < NEIGHBOUR_BIAS) & (centre_xy > 1)  # (M, 2): left, above
        near_high = (centre_from_far_side % 1 < NEIGHBOUR_BIAS) & (centre_from_far_side > 1)  # (M, 2): right, below
        use = torch.cat((torch.ones_like(near_low[:, :1]).T, near_low.T, near_high.T))  # (5, M)
        chosen = chosen.expand(5, *chosen.shape)[use]  # (K, 7)
        chosen_shifts = shifts[:, None].expand(5, use.shape[1], 2)[use]  # (K, 2)

        centre_xy, box_wh = chosen[:, 2:4], chosen[:, 4:6]
        cell_xy = (centre_xy - chosen_shifts).long()
        # yolov5 parity: cells are clamped in place, so the box offset below is measured from the clamped cell
        cell_xy[:, 0].clamp_(0, width - 1)
        cell_xy[:, 1].clamp_(0, height - 1)
        anchor = chosen[:, 6].long()
        assignments.append(LevelTargets(
            image=chosen[:, 0].long(),
            anchor=anchor,
            cell_y=cell_xy[:, 1],
            cell_x=cell_xy[:, 0],
            boxes=torch.cat((centre_xy - cell_xy, box_wh), 1),
            anchors_wh=anchors[level][anchor],
            classes=chosen[:, 1].long(),
        ))
    return assignments


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor,
                         focal_gamma: float = 0.0) -> torch.Tensor:
    """Mean BCE-with-logits; with focal_gamma > 0, the TF-style focal loss (alpha 0.25) YOLOv5 wraps around it."""
    if focal_gamma <= 0:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    probability = logits.sigmoid()
    p_t = targets * probability + (1 - targets) * (1 - probability)
    alpha_factor = targets * FOCAL_ALPHA + (1 - targets) * (1 - FOCAL_ALPHA)
    return (loss * (alpha_factor * (1.0 - p_t) ** focal_gamma)).mean()


class DetectionLoss(nn.Module):
    """YOLOv5 v7.0 ComputeLoss: `criterion(predictions, targets) -> (loss, items)`.

    predictions: the Detect head's train-mode maps, one (B, na, H, W, 5 + nc) per level.
    targets: (N, 6) = (image index in batch, class, x, y, w, h), boxes normalised to the image.
    loss: 0-dim tensor (lbox + lobj + lcls) * B, the value YOLOv5 returns with shape (1,).
    items: detached (3,) tensor [box, obj, cls] of the gain-weighted per-image terms.

    The criterion keeps its own copy of the anchors and never references the model, so it works unchanged when
    the model is wrapped (DDP, Accelerate). It copies the anchors when built: call `set_anchors(detect.anchors)`
    after anything that changes them (AutoAnchor, loading a checkpoint), or build the criterion after those.
    Its tensors follow `.to(device)`, and are moved to the predictions' device at call time otherwise.
    """

    loss_names = ("box_loss", "obj_loss", "cls_loss")

    def __init__(self, anchors: torch.Tensor, strides: Sequence[float] | torch.Tensor, nc: int, gains: LossHyp,
                 autobalance: bool = False):
        """anchors: (nl, na, 2) in grid units of each level; strides: (nl,) pixels per cell; gains: box, cls and obj
        already scaled (see `scale_loss_gains`), cls_pw, obj_pw, anchor_t, fl_gamma, label_smoothing."""
        super().__init__()
        self.register_buffer("anchors", anchors.detach().clone().float(), persistent=False)
        self.register_buffer("cls_pos_weight", torch.tensor([gains.cls_pw]), persistent=False)
        self.register_buffer("obj_pos_weight", torch.tensor([gains.obj_pw]), persistent=False)
        self.strides = [float(s) for s in strides]
        self.nl, self.na, self.nc = self.anchors.shape[0], self.anchors.shape[1], nc
        self.box_gain, self.obj_gain, self.cls_gain = gains.box, gains.obj, gains.cls
        self.anchor_t = gains.anchor_t
        self.focal_gamma = gains.fl_gamma
        smoothing = gains.label_smoothing
        self.class_positive, self.class_negative = 1.0 - 0.5 * smoothing, 0.5 * smoothing
        self.balance = list(LEVEL_BALANCE_P5 if self.nl == 3 else LEVEL_BALANCE_OTHER[:self.nl])
        self.autobalance = autobalance
        # autobalance keeps the stride-16 level's weight at 1; like YOLOv5 it needs a stride-16 level
        self.reference_level = self.strides.index(16.0) if autobalance else 0

    @classmethod
    def from_detect(cls, detect: nn.Module, gains: LossHyp, autobalance: bool = False) -> DetectionLoss:
        """Build from a Detect head (take it from the unwrapped model: `model.model[-1]`)."""
        return cls(detect.anchors, detect.stride.tolist(), detect.nc, gains, autobalance)

    def set_anchors(self, anchors: torch.Tensor) -> None:
        """Replace the anchors (nl, na, 2), grid units, e.g. with `detect.anchors` after AutoAnchor."""
        if anchors.shape != self.anchors.shape:
            raise ValueError(f"anchors of shape {tuple(anchors.shape)}, expected {tuple(self.anchors.shape)}")
        self.anchors = anchors.detach().to(self.anchors.device, torch.float32, copy=True)

    def forward(self, predictions: Sequence[torch.Tensor], targets: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        device = predictions[0].device
        targets = targets.to(device)
        assignments = build_targets(targets, [p.shape[2:4] for p in predictions], self.anchors.to(device),
                                    self.anchor_t)
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        for level, (prediction, assigned) in enumerate(zip(predictions, assignments)):
            target_obj = torch.zeros(prediction.shape[:4], dtype=prediction.dtype, device=device)  # (B, na, H, W)
            if len(assigned):
                matched = prediction[assigned.image, assigned.anchor, assigned.cell_y, assigned.cell_x]  # (n, 5+nc)
                iou = self.compute_iou(matched, assigned)
                box_loss = box_loss + (1.0 - iou).mean()
                # yolov5 parity: objectness target is the detached IoU itself (gr = 1.0), floored at 0; where
                # assignments share a cell the last write wins on CPU, and on CUDA an unspecified one unless
                # torch.use_deterministic_algorithms(True)
                target_obj[assigned.image, assigned.anchor, assigned.cell_y, assigned.cell_x] = \
                    iou.detach().clamp(0).to(target_obj.dtype)
                if self.nc > 1:  # a single class needs no class loss
                    cls_loss = cls_loss + self.class_loss(matched[:, 5:], assigned.classes)
            level_obj_loss = binary_cross_entropy(prediction[..., 4], target_obj, self.obj_pos_weight.to(device),
                                                  self.focal_gamma)
            obj_loss = obj_loss + level_obj_loss * self.balance[level]
            if self.autobalance:
                self.balance[level] = self.balance[level] * 0.9999 + 0.0001 / level_obj_loss.detach().item()
        if self.autobalance:
            self.balance = [b / self.balance[self.reference_level] for b in self.balance]

        box_loss, obj_loss, cls_loss = box_loss * self.box_gain, obj_loss * self.obj_gain, cls_loss * self.cls_gain
        batch_size = predictions[0].shape[0]
        return (box_loss + obj_loss + cls_loss) * batch_size, torch.stack((box_loss, obj_loss, cls_loss)).detach()

    @staticmethod
    def compute_iou(matched: torch.Tensor, assigned: LevelTargets) -> torch.Tensor:
        """CIoU (n,) of the decoded predicted boxes against their targets, both in grid units of the cell."""
        xy = matched[:, 0:2].sigmoid() * 2 - 0.5  # centre may sit up to half a cell outside its own cell
        wh = (matched[:, 2:4].sigmoid() * 2) ** 2 * assigned.anchors_wh  # 0 .. 4x the anchor
        return bbox_iou(torch.cat((xy, wh), 1), assigned.boxes, ciou=True).squeeze(-1)

    def class_loss(self, class_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """BCE of (n, nc) logits against one-hot targets, label-smoothed to (negative, positive)."""
        class_targets = torch.full_like(class_logits, self.class_negative)
        class_targets[torch.arange(classes.shape[0], device=classes.device), classes] = self.class_positive
        return binary_cross_entropy(class_logits, class_targets, self.cls_pos_weight.to(class_logits.device),
                                    self.focal_gamma)
