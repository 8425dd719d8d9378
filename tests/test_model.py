from __future__ import annotations

import copy

import pytest
import torch
import yaml

from yolo_accel.config import ConfigError
from yolo_accel.model import build_model
from yolo_accel.model.yolo import load_model_yaml


@pytest.fixture(scope="module")
def tiny(tiny_yaml):
    torch.manual_seed(0)
    return build_model(tiny_yaml)


def write_yaml(tmp_path, data, name="m.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_and_eval_output_shapes(tiny):
    model = copy.deepcopy(tiny).train()
    maps = model(torch.rand(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 8), (2, 3, 2, 3, 8)]
    model.eval()
    with torch.no_grad():
        decoded = model(torch.rand(2, 3, 64, 96))
        decoded_again, raw = model(torch.rand(2, 3, 64, 96), with_raw=True)
    assert decoded.shape == decoded_again.shape == (2, 3 * (96 + 24 + 6), 8)
    assert len(raw) == 3
    assert decoded[..., 4:].min() >= 0 and decoded[..., 4:].max() <= 1  # scores are probabilities


def test_eval_decodes_to_input_pixels(tiny):
    model = copy.deepcopy(tiny).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    xy = out[0, :, :2]
    # centres lie within the image up to half a cell beyond each edge (xy = (2*sigmoid - 0.5 + cell) * stride)
    assert xy.min() >= -0.5 * 32 and xy.max() <= 64 + 0.5 * 32
    assert model.stride.tolist() == [8.0, 16.0, 32.0]


def test_batched_equals_single(tiny):
    model = copy.deepcopy(tiny).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        batched = model(images)
        single = torch.cat([model(images[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_fuse_keeps_outputs_and_removes_norms(tiny):
    model = copy.deepcopy(tiny)
    with torch.no_grad():  # give the norms non-trivial statistics first
        for _ in range(3):
            model.train()(torch.rand(4, 3, 64, 64) * 2)
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        model.fuse()
        after = model(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_every_parameter_gets_a_gradient_and_loss_is_finite(tiny):
    model = copy.deepcopy(tiny).train()
    loss = sum(m.float().pow(2).mean() for m in model(torch.rand(2, 3, 64, 64)))
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_bias_prior(tiny):
    detect = tiny.model[-1]
    for conv, stride in zip(detect.m, (8, 16, 32)):
        bias = conv.bias.view(3, -1)
        prior_obj = torch.log(torch.tensor(8 / (640 / stride) ** 2))
        prior_cls = torch.log(torch.tensor(0.6 / (3 - 0.99999)))
        assert (bias[:, 4] - prior_obj).abs().max() < 1.0  # default init (|b| <= 1/sqrt(fan_in)) plus the prior
        assert (bias[:, 5:] - prior_cls).abs().max() < 1.0


def test_nc_and_anchor_overrides():
    model = build_model("yolov5n", nc=7, anchors=[[10, 14, 23, 27, 37, 58], [81, 82, 135, 169, 344, 319],
                                                 [400, 400, 500, 500, 600, 600]])
    assert model.nc == 7 and model.yaml["nc"] == 7
    assert model.model[-1].m[0].out_channels == 3 * 12
    # anchors are stored in grid units of their level
    torch.testing.assert_close(model.model[-1].anchors[0, 0], torch.tensor([10 / 8, 14 / 8]))


def test_anchors_listed_largest_first_are_flipped():
    cfg, _ = load_model_yaml("yolov5n")
    cfg = copy.deepcopy(cfg)
    cfg["anchors"] = cfg["anchors"][::-1]
    anchors = build_model(cfg).model[-1].anchors
    assert anchors[0, 0].tolist() == [10 / 8, 13 / 8]


@pytest.mark.parametrize("name", ["yolov5s", "yolov5s.yaml"])
def test_shipped_names_resolve(name):
    cfg, source = load_model_yaml(name)
    assert cfg["width_multiple"] == 0.5 and source.endswith("yolov5s.yaml")


def test_custom_yaml_by_path(tmp_path):
    cfg, _ = load_model_yaml("yolov5n")
    cfg = dict(cfg, nc=2, width_multiple=0.125)
    model = build_model(write_yaml(tmp_path, cfg))
    assert model.nc == 2 and model.model[0].conv.out_channels == 8


def test_unknown_model_name():
    with pytest.raises(ConfigError, match=r"yolov5q: no such file.*available: .*yolov5s"):
        build_model("yolov5q")


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        build_model(tmp_path / "nope.yaml")


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("nc: [1, 2\nbackbone: :\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: malformed YAML"):
        build_model(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_model(path)


def test_unknown_yaml_key(tmp_path):
    cfg, _ = load_model_yaml("yolov5n")
    with pytest.raises(ConfigError, match=r"m\.yaml: unknown key\(s\) 'depth_multiplier'"):
        build_model(write_yaml(tmp_path, dict(cfg, depth_multiplier=1.0)))


def test_unknown_module(tmp_path):
    cfg = copy.deepcopy(load_model_yaml("yolov5n")[0])
    cfg["backbone"][2][2] = "C2f"
    with pytest.raises(ConfigError, match="layer 2: unknown module 'C2f'"):
        build_model(write_yaml(tmp_path, cfg))


def test_missing_required_key(tmp_path):
    cfg = {k: v for k, v in load_model_yaml("yolov5n")[0].items() if k != "anchors"}
    with pytest.raises(ConfigError, match="missing required key"):
        build_model(write_yaml(tmp_path, cfg))


def test_activation_key_is_parsed_not_evaluated(tmp_path):
    cfg = dict(load_model_yaml("yolov5n")[0], activation="nn.LeakyReLU(0.1)")
    model = build_model(write_yaml(tmp_path, cfg))
    assert isinstance(model.model[0].act, torch.nn.LeakyReLU) and model.model[0].act.negative_slope == 0.1
    with pytest.raises(ConfigError, match="unsupported activation"):
        build_model(write_yaml(tmp_path, dict(cfg, activation="__import__('os').system('true')"), "evil.yaml"))


@pytest.mark.parametrize("cfg", ["yolov5n", "yolov5nu"])
def test_head_output_convolutions_stay_fp32_under_bf16_autocast(cfg):
    """The cause of bf16's lost accuracy: the objectness (and class) logits sit on a large prior offset while what
    training learns from is their small variation between cells, which bf16's 8 significant bits round coarsely.
    Under autocast the head's output convolutions must therefore run in fp32, on fp32 inputs."""
    torch.manual_seed(0)
    model = build_model(cfg, nc=6).train()
    head = model.model[-1]
    outputs = list(head.m) if hasattr(head, "m") else [branch[-1] for branch in (*head.cv2, *head.cv3)]
    seen = []
    for conv in outputs:
        conv.register_forward_hook(lambda module, args, out: seen.append((module, args[0], out)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model(torch.rand(2, 3, 64, 64))
    assert len(seen) == len(outputs) and all(r.dtype == torch.float32 for r in raw)
    for conv, x, out in seen:
        assert x.dtype == out.dtype == torch.float32
        torch.testing.assert_close(out, torch.nn.functional.conv2d(x, conv.weight, conv.bias), rtol=0, atol=0)
    if cfg == "yolov5n":  # what a bf16 head would do to the first level's objectness logits (about -6.7 here)
        logits = raw[0][..., 4]
        rounding = (logits.bfloat16().float() - logits).std() / logits.std()
        assert logits.mean() < -6 and rounding > 0.02
