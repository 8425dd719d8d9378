"""Every transform keeps boxes on their pixels: draw a box, transform, check the drawn pixels sit in the new box."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import generic_warp

from yolo_accel.data.augment import (
    aligned_matrix,
    apply_hsv,
    augment_hsv,
    box_candidates,
    copy_paste,
    letterbox,
    mixup,
    perspective_matrix,
    random_perspective,
    sampled_region,
    transform_points,
    warp,
)
from yolo_accel.data.batch_augment import apply_hsv_batch, rgb_to_hsv


def drawn_image(h=96, w=128, box=(30, 20, 70, 60)):
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image, np.array([[0, x1, y1, x2, y2]], np.float64)


def assert_box_frames_pixels(image, box, tol=1.5):
    """White pixels lie inside the box and reach each of its edges (within tol pixels)."""
    ys, xs = np.nonzero(image[..., 0] > 200)
    assert len(xs), "the object disappeared"
    x1, y1, x2, y2 = box
    # a white pixel (i, j) covers [j, j+1) x [i, i+1)
    assert xs.min() >= x1 - tol and xs.max() + 1 <= x2 + tol and ys.min() >= y1 - tol and ys.max() + 1 <= y2 + tol
    assert abs(xs.min() - x1) <= tol + 1 and abs(xs.max() + 1 - x2) <= tol + 1
    assert abs(ys.min() - y1) <= tol + 1 and abs(ys.max() + 1 - y2) <= tol + 1


@pytest.mark.parametrize("shape", [(128, 128), (64, 160), (200, 96)])
def test_letterbox_keeps_boxes(shape):
    image, labels = drawn_image()
    out, (rw, rh), (left, top) = letterbox(image, shape)
    assert out.shape[:2] == shape
    x1, y1, x2, y2 = labels[0, 1:]
    assert_box_frames_pixels(out, (x1 * rw + left, y1 * rh + top, x2 * rw + left, y2 * rh + top))
    assert (out[:top] == 114).all() and (out[:, :left] == 114).all()


def test_letterbox_auto_pads_to_stride():
    image, _ = drawn_image(100, 150)
    out, _, _ = letterbox(image, 128, auto=True, stride=32)
    assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0 and max(out.shape[:2]) == 128


@pytest.mark.parametrize("params", [
    dict(degrees=0, translate=0.1, scale=0.5, shear=0, perspective=0),
    dict(degrees=30, translate=0.1, scale=0.3, shear=0, perspective=0),
    dict(degrees=0, translate=0.0, scale=0.2, shear=10, perspective=0),
    dict(degrees=5, translate=0.05, scale=0.1, shear=2, perspective=0.0005),
])
def test_random_perspective_keeps_boxes(params):
    for seed in range(6):
        image, labels = drawn_image()
        out, new = random_perspective(image, labels.copy(), rng=np.random.default_rng(seed), **params)
        if not len(new):
            continue
        if params["degrees"] or params["shear"] or params["perspective"]:
            # a rotated/sheared rectangle's enclosing box: pixels inside, corners touch the edges
            assert_box_frames_pixels(out, new[0, 1:], tol=2.0)
        else:
            assert_box_frames_pixels(out, new[0, 1:])


def test_random_perspective_border_crops_like_mosaic():
    image, labels = drawn_image(256, 256, (100, 100, 180, 160))
    out, new = random_perspective(image, labels, rng=np.random.default_rng(0), degrees=0, translate=0.1, scale=0.5,
                                  shear=0, perspective=0, border=(-64, -64))
    assert out.shape[:2] == (128, 128)
    if len(new):
        assert_box_frames_pixels(out, new[0, 1:])


def test_box_candidates_filters_slivers():
    before = np.array([[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100]], float).T
    after = np.array([[0, 0, 50, 50], [0, 0, 1.5, 50], [0, 0, 9, 9]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False]


def test_hsv_changes_colour_but_not_geometry():
    image, _labels = drawn_image()
    image[..., 1] = 80  # some colour everywhere
    out = augment_hsv(image.copy(), np.random.default_rng(3), 0.5, 0.7, 0.4)
    assert out.shape == image.shape and not np.array_equal(out, image)
    changed = np.abs(out.astype(int) - image.astype(int)).sum(2)
    inside, outside = changed[20:60, 30:70], np.delete(changed, np.s_[20:60], axis=0)
    assert inside.std() < 8 and outside.std() < 8  # a per-colour mapping: uniform regions stay uniform


ALL_COLOURS = np.stack(np.meshgrid(*[np.arange(256, dtype=np.uint8)] * 3, indexing="ij"), -1).reshape(4096, 4096, 3)


def test_hsv_is_yolov5s_opencv_round_trip_for_every_colour():
    for seed in (0, 1):
        out = augment_hsv(ALL_COLOURS, np.random.default_rng(seed), 0.5, 0.7, 0.4)
        gains = np.random.default_rng(seed).uniform(-1, 1, 3) * [0.5, 0.7, 0.4] + 1
        hue, saturation, value = cv2.split(cv2.cvtColor(ALL_COLOURS, cv2.COLOR_RGB2HSV))
        x = np.arange(256, dtype=np.float64)
        hue = ((x * gains[0]) % 180).astype(np.uint8)[hue]  # hue wraps around OpenCV's 180 steps
        saturation = np.clip(x * gains[1], 0, 255).astype(np.uint8)[saturation]
        value = np.clip(x * gains[2], 0, 255).astype(np.uint8)[value]
        expected = cv2.cvtColor(cv2.merge((hue, saturation, value)), cv2.COLOR_HSV2RGB)
        assert np.array_equal(out, expected)
    assert augment_hsv(ALL_COLOURS, np.random.default_rng(0), 0, 0, 0) is ALL_COLOURS


def test_batched_device_hsv_equals_the_cpu_path_within_one_level():
    gains = np.array([[1.0, 1.0, 1.0], [1.315, 0.415, 1.215], [0.69, 1.59, 0.59]])
    images = torch.from_numpy(ALL_COLOURS[::4, ::4]).permute(2, 0, 1)[None].repeat(3, 1, 1, 1)
    images[1] = images[1].flip(-1)  # each image its own content and gains
    out = apply_hsv_batch(images, torch.from_numpy(gains))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for image, image_gains, result in zip(images, gains, out):
        expected = apply_hsv(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), image_gains)
        difference = np.abs(result.permute(1, 2, 0).numpy().astype(int) - expected)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    assert np.abs(rgb_to_hsv(images).permute(0, 2, 3, 1)[0].numpy() -
                  cv2.cvtColor(ALL_COLOURS[::4, ::4], cv2.COLOR_RGB2HSV)).max() == 0  # the forward half is exact


def test_scale_and_shift_warp_is_a_resize_of_a_whole_pixel_box():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 100, (37, 53, 3), dtype=np.uint8)  # far from the grey fill, so misplaced fill shows
    for _ in range(300):
        matrix = np.eye(3)
        matrix[0, 0], matrix[1, 1] = rng.uniform(0.5, 1.7, 2) if rng.random() < 0.8 else (1.0, 1.0)
        matrix[:2, 2] = rng.uniform(-40, 30, 2)  # image edges inside the output, on either side
        out_shape = tuple(rng.integers(20, 70, 2).tolist())
        out, used = warp(image, matrix, out_shape)
        assert out.shape == (*out_shape, 3) and used[0, 1] == used[1, 0] == 0
        # the output's corners read the input within a pixel of where the asked-for warp reads them
        corners = np.array([[0, 0], [out_shape[1], out_shape[0]]], float)
        moved = transform_points(corners, np.linalg.inv(used)) - transform_points(corners, np.linalg.inv(matrix))
        assert np.abs(moved).max() <= 1
        assert np.abs(moved[0]).max() <= 0.5
        # the box's edges sit on whole input pixels
        x0, y0 = transform_points(corners[:1], np.linalg.inv(used))[0]
        assert abs(x0 - round(x0)) < 1e-9 and abs(y0 - round(y0)) < 1e-9
        # pixels as the generic transform gives them: within two levels (the resize rounds after each of its two
        # passes, the transform truncates once); the outermost ring repeats the box's edge where the transform
        # reads a neighbour
        expected = generic_warp(image, used, out_shape, pad=2)
        assert np.abs(out.astype(int) - expected)[1:-1, 1:-1].max() <= 2


def test_far_shrinks_are_warped_directly():
    image = np.random.default_rng(0).integers(0, 100, (60, 80, 3), dtype=np.uint8)
    matrix = np.diag([0.1, 0.1, 1.0])
    matrix[:2, 2] = 20
    assert aligned_matrix(matrix, (60, 80), image.shape[:2]) is None  # the box would be 600 x 800
    out, used = warp(image, matrix, (60, 80))
    assert used is matrix and np.abs(out.astype(int) - generic_warp(image, matrix, (60, 80), pad=2)).max() <= 1
    assert aligned_matrix(np.diag([0.5, 0.5, 1.0]), (60, 80), image.shape[:2])[1] == (0, 0, 160, 120)


def test_sampled_region_holds_every_pixel_the_warp_reads():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
    smaller = 0
    for degrees, shear in ((0, 0), (30, 0), (10, 10)):
        for _ in range(20):
            matrix, _ = perspective_matrix(rng, (160, 160), (80, 80), degrees, 0.1, 0.5, shear, 0.0)
            x0, y0, x1, y1 = sampled_region(matrix, (80, 80), (160, 160))
            kept = np.zeros_like(image)
            kept[y0:y1, x0:x1] = image[y0:y1, x0:x1]
            assert np.array_equal(generic_warp(kept, matrix, (80, 80)), generic_warp(image, matrix, (80, 80)))
            smaller += (x1 - x0) * (y1 - y0) < 160 * 160
    assert smaller > 30


def test_flips_move_normalised_boxes(tmp_path):
    image, labels = drawn_image()
    flipped = image[:, ::-1]
    w = image.shape[1]
    x1, y1, x2, y2 = labels[0, 1:]
    assert_box_frames_pixels(flipped, (w - x2, y1, w - x1, y2))


def test_mixup_blends_and_keeps_both_label_sets():
    a, la = drawn_image(box=(10, 10, 40, 40))
    b, lb = drawn_image(box=(60, 50, 100, 90))
    out, labels = mixup(a, la, b, lb, np.random.default_rng(0))
    assert len(labels) == 2
    assert 90 < out[20, 20, 0] < 165 and 90 < out[70, 80, 0] < 165  # both objects at roughly half intensity


def test_copy_paste_mirrors_segmented_objects_inside_their_new_boxes():
    image, labels = drawn_image(96, 128, (10, 20, 40, 60))
    segment = np.array([[10, 20], [40, 20], [40, 60], [10, 60]], float)
    out, new_labels, segments = copy_paste(image, labels, [segment], p=1.0, rng=np.random.default_rng(0))
    assert len(new_labels) == 2 and len(segments) == 2
    x1, y1, x2, y2 = new_labels[1, 1:]
    assert (x1, x2) == (128 - 40, 128 - 10)
    right = out.copy()
    right[:, :64] = 0
    assert_box_frames_pixels(right, (x1, y1, x2, y2))
