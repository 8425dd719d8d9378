"""YOLOv5 detection model built from a model yaml (v7.0 schema), and its Detect head."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, check_keys, read_yaml, resolve_config
from .blocks import C3, SPPF, Bottleneck, Concat, Conv

MODEL_KEYS = {"nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head", "ch", "activation",
              "inplace",
              # Ultralytics 8 yamls (the YOLOv5u models): scales by letter, the letter, DFL bins, where they came from
              "scales", "scale", "reg_max", "yaml_file", "channels", "end2end", "kpt_shape"}
# modules whose first arg is output channels (scaled by width_multiple) and whose first input is ch[from]
CHANNEL_MODULES = {"Conv": Conv, "Bottleneck": Bottleneck, "C3": C3, "SPPF": SPPF}
REPEAT_MODULES = {"C3"}  # the depth repeat goes into the module, not an nn.Sequential around it
ACTIVATIONS = {"nn.SiLU": nn.SiLU, "nn.ReLU": nn.ReLU, "nn.Hardswish": nn.Hardswish, "nn.LeakyReLU": nn.LeakyReLU}
# bounds on what a yaml (or a weights file's header) may ask for, checked before anything is allocated
MAX_CLASSES = 10_000  # LVIS has 1203, Objects365 365
MAX_CHANNELS = 8192  # after width scaling (yolov5x: 1280); the build's 256 px probe stays well under 1 GB
MAX_MULTIPLE = 10.0  # depth/width multiples (yolov5x: 1.33/1.25)
MAX_LAYERS = 1000
MAX_REPEATS = 1000
MAX_PARAMETERS = 2_000_000_000  # 8 GB of fp32 weights; yolov5x6 has 141M


def make_divisible(x: float, divisor: int) -> int:
    return math.ceil(x / divisor) * divisor


def autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def output_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A detection head's output convolution, in fp32 also under autocast (on its input made fp32).

    Its logits carry large prior offsets: objectness starts near log(8 / cells), -4 to -7, classes near -2 (YOLOv5u's
    near -9), while what training learns from is their variation between cells, at first about 0.2. bf16 keeps 8
    significant bits, a step of 1/32 at 4-8, so a bf16 head quantizes that variation to a handful of levels; trained
    that way yolov5n lost 0.05-0.10 mAP50-95 on the demo data (the README's precision notes). The convolutions are
    1-8% of the model's FLOPs.
    """
    if autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return conv(x.float())
    return conv(x)


def branch_output(branch: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A head branch (convolutions, then an output convolution) with its last convolution in fp32 (output_conv)."""
    for layer in branch[:-1]:
        x = layer(x)
    return output_conv(branch[-1], x)


class Detect(nn.Module):
    """Per-level 1x1 convs to na*(5+nc) channels; in eval mode also decodes boxes to input pixels.

    `anchors` (nl, na, 2) is kept in grid units of each level (pixels / stride), as Ultralytics stores it.
    """

    def __init__(self, nc: int, anchors: list[list[float]], ch: list[int]):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)  # set by DetectionModel
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._grids: dict[tuple, torch.Tensor] = {}
        self.dynamic = False  # rebuild grids every call (exports with dynamic input shapes)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """x: per-level features. Train: list of (B, na, H, W, 5+nc) raw maps.
        Eval: (decoded (B, N, 5+nc) with xywh in pixels and sigmoid scores, raw maps)."""
        raw, decoded = [], []
        for i in range(self.nl):
            y = output_conv(self.m[i], x[i])
            bs, _, ny, nx = y.shape
            y = y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(y)
            if not self.training:
                grid, anchor_grid = self._grid(i, nx, ny)
                xy, wh, conf = y.sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + grid) * self.stride[i]
                wh = (wh * 2) ** 2 * anchor_grid
                decoded.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * ny * nx, self.no))
        return raw if self.training else (torch.cat(decoded, 1), raw)

    def _grid(self, i: int, nx: int, ny: int) -> tuple[torch.Tensor, torch.Tensor]:
        anchors = self.anchors[i]
        shape = 1, self.na, ny, nx, 2
        key = (i, nx, ny, anchors.device, anchors.dtype)
        grid = None if self.dynamic else self._grids.get(key)
        if grid is None:
            ys = torch.arange(ny, device=anchors.device, dtype=anchors.dtype)
            xs = torch.arange(nx, device=anchors.device, dtype=anchors.dtype)
            yv, xv = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack((xv, yv), 2).expand(shape) - 0.5  # centre offset: xy = 2 * sigmoid - 0.5
            self._grids = {k: v for k, v in self._grids.items() if k[0] != i}  # keep one size per level
            self._grids[key] = grid
        anchor_grid = (anchors * self.stride[i]).view(1, self.na, 1, 1, 2).expand(shape)
        return grid, anchor_grid

    @torch.no_grad()
    def initialize_biases(self) -> None:
        """Objectness prior of ~8 objects per 640 image, class prior 0.6/nc (YOLOv5 v7.0)."""
        for conv, s in zip(self.m, self.stride.tolist()):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))


class DFL(nn.Module):
    """The distribution focal loss integral: (B, 4 * bins, A) logits -> (B, 4, A) expected distances, in bins."""

    def __init__(self, bins: int = 16):
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float).view(1, bins, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class AnchorFreeDetect(nn.Module):
    """The YOLOv5u head (Ultralytics 8's Detect): per level a box branch `cv2` (Conv 3x3, Conv 3x3, 1x1 to
    4 x reg_max distance logits) and a class branch `cv3` (Conv 3x3, Conv 3x3, 1x1 to nc); no anchors, no objectness.
    Boxes are ltrb distances from each cell's centre, decoded with the DFL integral."""

    anchor_free = True

    def __init__(self, nc: int, ch: list[int], reg_max: int = 16, act: nn.Module | None = None):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), reg_max
        act = act if act is not None else nn.SiLU()  # one instance for every Conv, as the model's others
        self.no = nc + 4 * reg_max  # outputs per cell
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)  # set by DetectionModel
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))  # branch widths, as Ultralytics
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, c2, 3, act=act), Conv(c2, c2, 3, act=act),
                                               nn.Conv2d(c2, 4 * reg_max, 1)) for c in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3, act=act), Conv(c3, c3, 3, act=act),
                                               nn.Conv2d(c3, nc, 1)) for c in ch)
        self.dfl = DFL(reg_max)
        self._points: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.dynamic = False  # rebuild anchor points every call (exports with dynamic input shapes)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """x: per-level features. Train: list of raw maps (B, 4 * reg_max + nc, H, W).
        Eval: (decoded (B, N, 4 + nc) with xywh in pixels and sigmoid class scores, raw maps)."""
        raw = [torch.cat((branch_output(self.cv2[i], x[i]), branch_output(self.cv3[i], x[i])), 1)
               for i in range(self.nl)]
        if self.training:
            return raw
        batch = raw[0].shape[0]
        flat = torch.cat([r.view(batch, self.no, -1) for r in raw], 2)  # (B, no, N)
        distances, logits = flat.split((4 * self.reg_max, self.nc), 1)
        points, strides = self.anchor_points(raw)
        boxes = distances_to_boxes(self.dfl(distances), points.T[None], xywh=True, dim=1) * strides.T
        return torch.cat((boxes, logits.sigmoid()), 1).transpose(1, 2), raw

    def anchor_points(self, raw: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2) cell centres in grid units and (N, 1) strides, for these map sizes (cached per size)."""
        key = (*((r.shape[2], r.shape[3]) for r in raw), raw[0].device, raw[0].dtype)
        if self.dynamic or key not in self._points:
            self._points = {key: make_anchor_points([r.shape[2:] for r in raw], self.stride.tolist(),
                                                    raw[0].dtype, raw[0].device)}
        return self._points[key]

    @torch.no_grad()
    def initialize_biases(self) -> None:
        """Box logits start at 2.0 and classes at a prior of ~5 objects per 640 image (Ultralytics 8.4)."""
        for box, cls, s in zip(self.cv2, self.cv3, self.stride.tolist()):
            box[-1].bias.data[:] = 2.0
            cls[-1].bias.data[:self.nc] = math.log(5 / self.nc / (640 / s) ** 2)


def make_anchor_points(sizes: list, strides: list[float], dtype: torch.dtype, device: torch.device,
                       offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of every level, (N, 2) in each level's grid units (x, y), and their strides (N, 1)."""
    points, stride_rows = [], []
    for (h, w), s in zip(sizes, strides):  # sizes as the maps' shapes give them (symbolic in a dynamic export)
        ys = torch.arange(h, device=device, dtype=dtype) + offset
        xs = torch.arange(w, device=device, dtype=dtype) + offset
        yv, xv = torch.meshgrid(ys, xs, indexing="ij")
        level = torch.stack((xv, yv), -1).view(-1, 2)
        points.append(level)
        stride_rows.append(torch.full_like(level[:, :1], float(s)))
    return torch.cat(points), torch.cat(stride_rows)


def distances_to_boxes(distances: torch.Tensor, points: torch.Tensor, xywh: bool = True,
                       dim: int = -1) -> torch.Tensor:
    """ltrb distances from points -> boxes (xywh or xyxy) along `dim`."""
    lt, rb = distances.chunk(2, dim)
    top_left, bottom_right = points - lt, points + rb
    if xywh:
        return torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left), dim)
    return torch.cat((top_left, bottom_right), dim)


class DetectionModel(nn.Module):
    """A YOLOv5 detector. `model` is an nn.Sequential so keys read `model.0.conv.weight` ... `model.24.anchors`.

    forward(images (B, 3, H, W) float in [0, 1]):
      train mode -> list of raw maps (B, na, H/s, W/s, 5+nc), one per level;
      eval mode  -> decoded (B, N, 5+nc): xywh in input pixels, objectness and class scores in [0, 1];
                    with `with_raw=True`, (decoded, raw maps) for validation losses.
    With the anchor-free head (YOLOv5u yamls: `Detect, [nc]` and no anchors) the raw maps are
    (B, 4 * reg_max + nc, H/s, W/s) and the decoded output (B, N, 4 + nc): no objectness column.
    """

    def __init__(self, cfg: dict[str, Any], nc: int | None = None, anchors: list | None = None,
                 source: str = "model yaml"):
        super().__init__()
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: a model yaml must be a mapping, got {type(cfg).__name__}")
        cfg = copy.deepcopy(cfg)
        required = {"nc", "backbone", "head"} | ({"scales"} if "scales" in cfg else {"depth_multiple",
                                                                                         "width_multiple"})
        if not is_anchor_free(cfg):
            required.add("anchors")
        check_keys(cfg, MODEL_KEYS, required, source)
        if nc is not None:
            cfg["nc"] = int(nc)
        if anchors is not None:
            cfg["anchors"] = anchors
        cfg.setdefault("ch", 3)
        self.yaml = cfg
        with torch.device("meta"):  # its size first, with no memory behind it
            parameters = sum(p.numel() for p in parse_model(cfg, source)[0].parameters())
        if parameters > MAX_PARAMETERS:
            raise ConfigError(f"{source}: the model would have {parameters:,} parameters (at most "
                              f"{MAX_PARAMETERS:,}); check nc, width_multiple and the channel counts")
        self.model, self.sources, self.save = parse_model(cfg, source)
        self.names = [str(i) for i in range(cfg["nc"])]

        detect = self.model[-1]
        probe = 256  # 2x the largest stride of P5 models; P6 also divides it
        with torch.no_grad():
            maps = self.forward(torch.zeros(1, cfg["ch"], probe, probe))
        height_dim = -2 if self.anchor_free else -3  # (B, C, H, W) or (B, na, H, W, no)
        detect.stride.copy_(torch.tensor([probe / m.shape[height_dim] for m in maps]))
        if not self.anchor_free:
            apply_anchor_order(detect)
            detect.anchors /= detect.stride.view(-1, 1, 1)
        detect.initialize_biases()
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.03  # after the probe, which (as in yolov5) ran at momentum 0.1

    @property
    def stride(self) -> torch.Tensor:
        return self.model[-1].stride

    @property
    def nc(self) -> int:
        return self.model[-1].nc

    @property
    def anchor_free(self) -> bool:
        """The YOLOv5u head: class scores without objectness (decoded rows are 4 + nc wide)."""
        return getattr(self.model[-1], "anchor_free", False)

    def forward(self, x: torch.Tensor, with_raw: bool = False):
        outputs: list[torch.Tensor | None] = []
        for layer, src in zip(self.model, self.sources):
            if src != -1:
                x = outputs[src] if isinstance(src, int) else [x if j == -1 else outputs[j] for j in src]
            x = layer(x)
            outputs.append(x if len(outputs) in self.save else None)
        if self.training or with_raw:
            return x
        return x[0]

    @torch.no_grad()
    def forward_augmented(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time augmentation (YOLOv5's): the image at scales 1, 0.83 (flipped left-right) and 0.67, decoded
        predictions mapped back to the input's pixels and concatenated, (B, N, 5+nc). Eval mode only."""
        height, width = x.shape[-2:]
        grid_stride = int(self.stride.max())
        outputs = []
        for scale, flip in ((1.0, False), (0.83, True), (0.67, False)):
            xi = x.flip(-1) if flip else x
            if scale != 1.0:
                size = int(height * scale), int(width * scale)
                xi = F.interpolate(xi, size=size, mode="bilinear", align_corners=False)
                padded = [math.ceil(v * scale / grid_stride) * grid_stride for v in (height, width)]
                xi = F.pad(xi, [0, padded[1] - size[1], 0, padded[0] - size[0]], value=0.447)  # ImageNet mean
            y = self.forward(xi)
            y[..., :4] /= scale
            if flip:
                y[..., 0] = width - y[..., 0]
            outputs.append(y)
        # yolov5 parity: drop the full-size copy's largest-stride (big object) boxes and the smallest copy's
        # smallest-stride (small object) boxes
        levels = self.model[-1].nl
        cells = sum(4**k for k in range(levels))
        outputs[0] = outputs[0][:, : -(outputs[0].shape[1] // cells)]
        outputs[-1] = outputs[-1][:, (outputs[-1].shape[1] // cells) * 4 ** (levels - 1):]
        return torch.cat(outputs, 1)

    def fuse(self) -> DetectionModel:
        """Fold every BatchNorm into its conv (inference only)."""
        for module in self.model.modules():
            if isinstance(module, Conv):
                module.fuse()
        return self


def apply_anchor_order(detect: Detect) -> None:
    """Flip anchors in place if their areas do not grow with stride (a yaml listing them P5-first)."""
    area = detect.anchors.prod(-1).mean(-1).view(-1)
    d_area, d_stride = area[-1] - area[0], detect.stride[-1] - detect.stride[0]
    if d_area and d_area.sign() != d_stride.sign():
        detect.anchors[:] = detect.anchors.flip(0)


def _activation(spec: Any, source: str) -> nn.Module:
    match = re.fullmatch(r"\s*(nn\.\w+)\(\s*([-+0-9.eE]*)\s*\)\s*", str(spec))
    if not match or match.group(1) not in ACTIVATIONS:
        raise ConfigError(f"{source}: unsupported activation {spec!r} (use one of "
                          f"{', '.join(k + '()' for k in ACTIVATIONS)})")
    cls, arg = ACTIVATIONS[match.group(1)], match.group(2)
    return cls(float(arg)) if arg else cls()


def _resolve_arg(arg: Any, cfg: dict[str, Any]) -> Any:
    """yaml args may name 'nc', 'anchors' or 'None' as strings; everything else stays as written."""
    if arg == "nc":
        return cfg["nc"]
    if arg == "anchors":
        return cfg["anchors"]
    if arg == "None":
        return None
    return arg


def parse_model(cfg: dict[str, Any], source: str) -> tuple[nn.Sequential, list, set[int]]:
    """Build layers from backbone+head rows `[from, number, module, args]` with YOLOv5 v7.0 scaling rules.

    Returns (layers, sources per layer, indices whose outputs later layers read).
    """
    nc, anchors = cfg["nc"], cfg.get("anchors")
    gd, gw, max_channels = model_multiples(cfg, source)
    if not isinstance(nc, int) or isinstance(nc, bool) or not 1 <= nc <= MAX_CLASSES:
        raise ConfigError(f"{source}: nc must be an integer from 1 to {MAX_CLASSES}, got {nc!r}")
    if not isinstance(cfg["ch"], int) or not 1 <= cfg["ch"] <= 64:
        raise ConfigError(f"{source}: ch (input channels) must be an integer from 1 to 64, got {cfg['ch']!r}")
    anchor_free = is_anchor_free(cfg)
    if anchor_free:
        na = 0
    elif isinstance(anchors, int) and anchors > 0:  # a count per level: placeholders that AutoAnchor replaces
        na = anchors
    elif isinstance(anchors, list) and anchors:
        na = len(anchors[0]) // 2
    else:
        raise ConfigError(f"{source}: anchors must be a list of per-level [w, h, ...] lists, or a count per level")
    outputs_per_level = na * (nc + 5)
    # yolov5 parity: one activation instance shared by every Conv, so module counts match its summary
    act = _activation(cfg["activation"], source) if cfg.get("activation") else nn.SiLU()
    if not all(isinstance(cfg[k], list) for k in ("backbone", "head")):
        raise ConfigError(f"{source}: backbone and head must be lists of layers")
    rows = list(cfg["backbone"]) + list(cfg["head"])
    if not 1 <= len(rows) <= MAX_LAYERS:
        raise ConfigError(f"{source}: {len(rows)} layers (at most {MAX_LAYERS})")
    layers, sources, save, ch = [], [], set(), [cfg["ch"]]
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[3], list)):
            raise ConfigError(f"{source}: layer {i} must be [from, number, module, args], got {row!r}")
        src, n, name, args = row
        if not isinstance(n, int) or not 1 <= n <= MAX_REPEATS:
            raise ConfigError(f"{source}: layer {i}: number must be an integer from 1 to {MAX_REPEATS}, got {n!r}")
        args = [_resolve_arg(a, cfg) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        try:
            kwargs: dict[str, Any] = {}
            if name in CHANNEL_MODULES:
                c1, c2 = ch[src], args[0]
                if c2 != outputs_per_level:
                    c2 = make_divisible(min(c2, max_channels) * gw, 8)
                if not 1 <= c2 <= MAX_CHANNELS:
                    raise ConfigError(f"{source}: layer {i}: {c2} output channels (at most {MAX_CHANNELS})")
                args = [c1, c2, *args[1:]]
                if name in REPEAT_MODULES:
                    args.insert(2, n)
                    n = 1
                cls, kwargs = CHANNEL_MODULES[name], {"act": act}
            elif name == "Concat":
                cls, c2 = Concat, sum(ch[j] for j in src)
            elif name in ("nn.Upsample", "Upsample"):
                cls, c2 = nn.Upsample, ch[src]
            elif name == "Detect" and anchor_free:
                cls, kwargs = AnchorFreeDetect, {"act": act}
                args = [args[0], [ch[j] for j in src], int(cfg.get("reg_max", 16))]
            elif name == "Detect":
                if isinstance(args[1], int):  # a number of anchors: placeholders, replaced by AutoAnchor
                    args[1] = [list(range(args[1] * 2))] * len(src)
                if len(args[1]) != len(src):
                    raise ConfigError(f"{source}: Detect reads {len(src)} levels but anchors has {len(args[1])}")
                cls = Detect
                args.append([ch[j] for j in src])
            else:
                raise ConfigError(f"{source}: layer {i}: unknown module {name!r} (supported: "
                                  f"{', '.join([*CHANNEL_MODULES, 'Concat', 'nn.Upsample', 'Detect'])})")
            layer = nn.Sequential(*(cls(*args, **kwargs) for _ in range(n))) if n > 1 else cls(*args, **kwargs)
        except ConfigError:
            raise
        except (IndexError, TypeError, ValueError) as err:
            raise ConfigError(f"{source}: layer {i} {row!r}: {err}") from None
        sources.append(src)
        save.update(j % i for j in ([src] if isinstance(src, int) else src) if j != -1)
        layers.append(layer)
        if i == 0:
            ch = []
        ch.append(c2)
    if not isinstance(layers[-1], (Detect, AnchorFreeDetect)):
        raise ConfigError(f"{source}: the last layer must be Detect")
    return nn.Sequential(*layers), sources, save


def is_anchor_free(cfg: dict[str, Any]) -> bool:
    """A YOLOv5u yaml: its last layer is `Detect, [nc]` (no anchors argument) and it has no anchors key."""
    try:
        last = cfg["head"][-1]
        return last[2] == "Detect" and len(last[3]) == 1 and "anchors" not in cfg
    except (KeyError, IndexError, TypeError):
        return False


def model_multiples(cfg: dict[str, Any], source: str) -> tuple[float, float, float]:
    """(depth multiple, width multiple, channel cap): the yaml's own, or, in an Ultralytics 8 yaml with `scales`,
    those of its `scale` letter."""
    if "scales" in cfg:
        scales, scale = cfg["scales"], cfg.get("scale")
        if not isinstance(scales, dict) or not scales:
            raise ConfigError(f"{source}: scales must map a letter to [depth, width, max_channels]")
        scale = scale if scale in scales else next(iter(scales))
        try:
            depth, width, cap = (float(v) for v in scales[scale])
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: scales[{scale!r}] must be [depth, width, max_channels]") from None
    else:
        depth, width, cap = cfg["depth_multiple"], cfg["width_multiple"], math.inf
    for key, value in (("depth_multiple", depth), ("width_multiple", width)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= MAX_MULTIPLE:
            raise ConfigError(f"{source}: {key} must be a number in (0, {MAX_MULTIPLE}], got {value!r}")
    if not cap >= 8:
        raise ConfigError(f"{source}: max_channels must be at least 8, got {cap}")
    return depth, width, cap


def load_model_yaml(cfg: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A model yaml dict and a name for messages, from a dict, a path, or a shipped name like 'yolov5s'."""
    if isinstance(cfg, dict):
        return cfg, "model yaml"
    path = resolve_config(cfg, "models")
    return read_yaml(path), str(path)


def build_model(cfg: str | Path | dict[str, Any], nc: int | None = None,
                anchors: list | None = None) -> DetectionModel:
    """Build a freshly initialised model from a yaml (dict, path or shipped name)."""
    data, source = load_model_yaml(cfg)
    model = DetectionModel(data, nc=nc, anchors=anchors, source=source)
    model.yaml_file = Path(source).name if source != "model yaml" else None
    return model
