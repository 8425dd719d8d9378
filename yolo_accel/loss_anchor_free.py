"""The YOLOv5u (anchor-free) loss, as Ultralytics 8's v8DetectionLoss: task-aligned assignment (top-k 10, alpha
0.5, beta 6.0), then CIoU box loss and distribution focal loss (DFL) on the assigned cells, weighted by their target
scores, and BCE on the class scores, all normalised by the sum of target scores.

predictions: the head's train-mode maps, one (B, 4 * reg_max + nc, H, W) per level.
targets: (N, 6) = (image index in batch, class, x, y, w, h), boxes normalised to the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .boxes import bbox_iou, xywh_to_xyxy, xyxy_to_xywh
from .config import LossHyp
from .model.yolo import distances_to_boxes, make_anchor_points


class TaskAlignedAssigner:
    """Assigns each ground-truth box to the cells whose centres lie in it and whose predictions score best on
    score^alpha * CIoU^beta (the top k), a cell claimed by several boxes going to the one it overlaps most; the
    target scores are one-hot classes scaled by the normalised alignment. Boxes with a side under the middle stride
    count as that wide when choosing cells (Ultralytics 8.4)."""

    def __init__(self, nc: int, strides: Sequence[float], topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 eps: float = 1e-9):
        self.nc, self.topk, self.alpha, self.beta, self.eps = nc, topk, alpha, beta, eps
        self.min_side = float(strides[1] if len(strides) > 1 else strides[0])

    @torch.no_grad()
    def __call__(self, scores: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, gt_labels: torch.Tensor,
                 gt_boxes: torch.Tensor, gt_valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """scores (B, A, nc) sigmoid, boxes (B, A, 4) xyxy pixels, points (A, 2) pixels; gt_labels (B, M, 1),
        gt_boxes (B, M, 4) xyxy pixels, gt_valid (B, M, 1). Returns target boxes (B, A, 4), target scores
        (B, A, nc), foreground (B, A) bool and the assigned box index (B, A)."""
        batch, anchors = scores.shape[:2]
        boxes_per_image = gt_boxes.shape[1]
        if boxes_per_image == 0:
            return (torch.zeros_like(boxes), torch.zeros_like(scores),
                    torch.zeros_like(scores[..., 0], dtype=torch.bool), torch.zeros_like(scores[..., 0]))
        in_box = self.cells_in_boxes(points, gt_boxes, gt_valid)  # (B, M, A)
        candidates = in_box & gt_valid.bool()
        b, m, a = candidates.nonzero(as_tuple=True)
        pair_scores = scores[b, a, gt_labels[b, m, 0].long()]
        pair_ious = bbox_iou(gt_boxes[b, m], boxes[b, a], xywh=False, ciou=True, clamp_height=False).squeeze(-1)
        pair_ious = pair_ious.clamp(0)
        overlaps = torch.zeros((batch, boxes_per_image, anchors), dtype=boxes.dtype, device=boxes.device)
        alignment = torch.zeros((batch, boxes_per_image, anchors), dtype=scores.dtype, device=scores.device)
        overlaps[b, m, a] = pair_ious
        alignment[b, m, a] = pair_scores.pow(self.alpha) * pair_ious.pow(self.beta)

        # the top k cells of each box by alignment (padding boxes choose nothing), inside the box
        top = alignment.topk(self.topk, dim=-1).indices.masked_fill(~gt_valid.bool().expand(-1, -1, self.topk), 0)
        chosen = torch.zeros_like(alignment, dtype=torch.int8).scatter_add_(
            -1, top, torch.ones_like(top, dtype=torch.int8))
        chosen.masked_fill_(chosen > 1, 0)
        positive = chosen * in_box * gt_valid.bool()  # (B, M, A)

        # a cell claimed by several boxes keeps the one it overlaps most
        claimed = positive.sum(-2)
        best = torch.zeros_like(positive).scatter_(1, overlaps.max(1).indices.unsqueeze(1), 1)
        positive = torch.where((claimed.unsqueeze(1) > 1).expand(-1, boxes_per_image, -1), best, positive)
        foreground, assigned = positive.max(-2)  # (B, A)

        flat = assigned + torch.arange(batch, device=assigned.device)[:, None] * boxes_per_image
        target_labels = gt_labels.long().flatten()[flat].clamp_(0)
        target_boxes = gt_boxes.view(-1, 4)[flat]
        target_scores = torch.zeros((batch, anchors, self.nc), dtype=torch.int8, device=scores.device)
        target_scores.scatter_(2, target_labels.unsqueeze(-1), 1)
        target_scores = target_scores * (foreground[:, :, None] > 0)

        # scale each box's targets so its best-aligned cell gets its best IoU
        alignment = alignment * positive
        overlaps = overlaps * positive
        normalised = alignment * overlaps.amax(-1, keepdim=True) / (alignment.amax(-1, keepdim=True) + self.eps)
        target_scores = target_scores * normalised.amax(-2).unsqueeze(-1)
        return target_boxes, target_scores, foreground.bool(), assigned

    def cells_in_boxes(self, points: torch.Tensor, gt_boxes: torch.Tensor, gt_valid: torch.Tensor) -> torch.Tensor:
        """(B, M, A): cell centres strictly inside each box (sides under `min_side` widened to it first)."""
        xywh = xyxy_to_xywh(gt_boxes)
        small = (xywh[..., 2:] < self.min_side) & gt_valid.bool()
        xywh[..., 2:] = torch.where(small, torch.tensor(self.min_side, dtype=xywh.dtype, device=xywh.device),
                                    xywh[..., 2:])
        top_left, bottom_right = xywh_to_xyxy(xywh).unsqueeze(2).chunk(2, 3)  # (B, M, 1, 2)
        inside = points[:, 0] - top_left[..., 0] > self.eps
        inside &= points[:, 1] - top_left[..., 1] > self.eps
        inside &= bottom_right[..., 0] - points[:, 0] > self.eps
        inside &= bottom_right[..., 1] - points[:, 1] > self.eps
        return inside


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n, bins) logits against continuous targets (n,) in bins: cross-entropy with the two neighbouring bins,
    weighted by closeness. Returns (n,)."""
    target = target.clamp(0, logits.shape[-1] - 1 - 0.01)
    left = target.long()
    weight_left = left + 1 - target
    log_probs = F.log_softmax(logits, dim=1)
    return -(log_probs.gather(1, left.view(-1, 1)).view(left.shape) * weight_left +
             log_probs.gather(1, (left + 1).view(-1, 1)).view(left.shape) * (1 - weight_left))


class AnchorFreeLoss(nn.Module):
    """`criterion(predictions, targets) -> (loss, items)`: loss = (box + cls + dfl) * B, items the gain-weighted
    (3,) terms, detached."""

    loss_names = ("box_loss", "cls_loss", "dfl_loss")

    def __init__(self, strides: Sequence[float], nc: int, reg_max: int, gains: LossHyp, topk: int = 10):
        super().__init__()
        self.strides = [float(s) for s in strides]
        self.nc, self.reg_max = nc, reg_max
        self.box_gain, self.cls_gain, self.dfl_gain = gains.box, gains.cls, gains.dfl
        self.assigner = TaskAlignedAssigner(nc, self.strides, topk=topk)
        self.register_buffer("bins", torch.arange(reg_max, dtype=torch.float), persistent=False)

    @classmethod
    def from_detect(cls, detect: nn.Module, gains: LossHyp) -> AnchorFreeLoss:
        """Build from the anchor-free head (take it from the unwrapped model: `model.model[-1]`)."""
        return cls(detect.stride.tolist(), detect.nc, detect.reg_max, gains)

    def forward(self, predictions: Sequence[torch.Tensor], targets: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        device = predictions[0].device
        batch = predictions[0].shape[0]
        flat = torch.cat([p.view(batch, p.shape[1], -1) for p in predictions], 2)  # (B, no, A)
        distances, logits = flat.split((4 * self.reg_max, self.nc), 1)
        distances = distances.permute(0, 2, 1).contiguous()  # (B, A, 4 * reg_max)
        logits = logits.permute(0, 2, 1).contiguous()  # (B, A, nc)
        points, strides = make_anchor_points([p.shape[2:] for p in predictions], self.strides, logits.dtype, device)
        height, width = (predictions[0].shape[2] * self.strides[0], predictions[0].shape[3] * self.strides[0])

        gt_labels, gt_boxes = self.padded_targets(targets.to(device), batch, width, height)
        gt_valid = gt_boxes.sum(2, keepdim=True).gt(0.0)
        expected = distances.view(batch, -1, 4, self.reg_max).softmax(3).matmul(self.bins.to(distances.dtype))
        boxes = distances_to_boxes(expected, points, xywh=False)  # (B, A, 4) xyxy, grid units
        target_boxes, target_scores, foreground, _ = self.assigner(
            logits.detach().sigmoid(), (boxes.detach() * strides).to(gt_boxes.dtype), points * strides,
            gt_labels, gt_boxes, gt_valid)
        score_sum = target_scores.sum().clamp(min=1)

        cls_loss = F.binary_cross_entropy_with_logits(logits, target_scores.to(logits.dtype),
                                                      reduction="none").sum() / score_sum
        target_boxes = target_boxes / strides
        index = foreground.nonzero(as_tuple=True)
        weight = target_scores[index].sum(-1, keepdim=True)
        iou = bbox_iou(boxes[index], target_boxes[index], xywh=False, ciou=True, clamp_height=False)
        box_loss = ((1.0 - iou) * weight).sum() / score_sum
        target_distances = torch.cat((points - target_boxes[..., :2], target_boxes[..., 2:] - points), -1)
        target_distances = target_distances.clamp(0, self.reg_max - 1 - 0.01)
        dfl = distribution_focal_loss(distances[index].view(-1, self.reg_max), target_distances[index].view(-1))
        dfl_loss = (dfl.view(-1, 4).mean(-1, keepdim=True) * weight).sum() / score_sum

        items = torch.stack((box_loss * self.box_gain, cls_loss * self.cls_gain, dfl_loss * self.dfl_gain))
        return items.sum() * batch, items.detach()

    @staticmethod
    def padded_targets(targets: torch.Tensor, batch: int, width: float, height: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 6) targets -> per image (B, M, 1) classes and (B, M, 4) xyxy pixel boxes, zero-padded to the most
        boxes any image has."""
        if not len(targets):
            return (torch.zeros(batch, 0, 1, device=targets.device), torch.zeros(batch, 0, 4, device=targets.device))
        image = targets[:, 0].long()
        counts = torch.bincount(image, minlength=batch)
        out = torch.zeros(batch, int(counts.max()), 5, device=targets.device)
        starts = torch.cumsum(counts, 0) - counts
        order = torch.argsort(image, stable=True)
        slot = torch.arange(len(targets), device=targets.device) - starts[image[order]]
        out[image[order], slot] = targets[order, 1:]
        scale = torch.tensor([width, height, width, height], device=targets.device)
        out[..., 1:5] = xywh_to_xyxy(out[..., 1:5] * scale)
        return out[..., :1], out[..., 1:5]
