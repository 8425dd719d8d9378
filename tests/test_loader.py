"""Loader: whole batches built by workers, the same for any worker count, and workers under stop signals."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_data import HYP, make_split, write_image, write_yaml

import yolo_accel.data.loader as loader_module
from yolo_accel.data.batch_augment import apply_hsv_batch
from yolo_accel.data.dataset import POOL_DEPTH, POOL_STRIDE, HeldImages, Key, YoloDataset
from yolo_accel.data.labels import scan_labels
from yolo_accel.data.loader import EpochSampler, PoolBatchSampler, build_dataloader, outlive_sigterm
from yolo_accel.data.sources import list_images, load_data_config


@pytest.fixture
def dataset_root(tmp_path):
    root = tmp_path / "ds"
    make_split(root, "train")
    return root


def test_same_seed_same_batches_across_workers(dataset_root):
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", names=["a"]))
    index = scan_labels(list_images(cfg, "train"))

    def first_batch(seed, workers, epoch=0):
        dataset = YoloDataset(index, imgsz=64, augment=True, hyp=HYP, seed=seed)
        loader = build_dataloader(dataset, batch_size=2, workers=workers, shuffle=True, seed=seed)
        loader.batch_sampler.sampler.set_epoch(epoch)
        return next(iter(loader))

    a, b, c = first_batch(1, 0), first_batch(1, 2), first_batch(2, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], first_batch(1, 0, epoch=1)[0])


def test_workers_kept_across_epochs_follow_set_epoch(dataset_root):
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", names=["a"]))
    dataset = YoloDataset(scan_labels(list_images(cfg, "train")), imgsz=64, augment=True, hyp=HYP, seed=3)

    def epochs(workers):
        loader = build_dataloader(dataset, batch_size=2, workers=workers, shuffle=True, seed=3)
        out = []
        for epoch in range(2):
            loader.batch_sampler.sampler.set_epoch(epoch)
            out.append([(batch.images, batch.targets) for batch in loader])
        return out

    kept, single = epochs(2), epochs(0)
    for epoch in range(2):
        for (a, at), (b, bt) in zip(kept[epoch], single[epoch], strict=True):
            assert torch.equal(a, b) and torch.equal(at, bt)
    assert not torch.equal(kept[0][0][0], kept[1][0][0])


def test_workers_outlive_stop_signals_sent_to_the_process_group(dataset_root):
    """Ctrl-C or `timeout`'s SIGTERM reach the loader workers too: they keep serving the epoch (the main process
    finishes its batch and saves before it closes them), then leave when the loader closes."""
    cfg = load_data_config(write_yaml(dataset_root / "d.yaml", train="images/train", names=["a"]))
    dataset = YoloDataset(scan_labels(list_images(cfg, "train")), imgsz=64, augment=True, hyp=HYP, seed=3)
    loader = build_dataloader(dataset, batch_size=2, workers=2, shuffle=True, seed=3)
    assert len(list(loader)) == len(loader)  # both workers started
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker.pid, signal.SIGINT)
        os.kill(worker.pid, signal.SIGTERM)
    loader.batch_sampler.sampler.set_epoch(1)
    assert len(list(loader)) == len(loader) and all(w.is_alive() for w in workers)
    del loader
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0


def test_sigterm_outside_a_loader_worker_loop_still_ends_the_process():
    def victim():
        signal.signal(signal.SIGTERM, outlive_sigterm)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    process = multiprocessing.get_context("fork").Process(target=victim)
    process.start()
    process.join(timeout=30)
    assert process.exitcode == -signal.SIGTERM


EXIT_WITH_OPEN_LOADER = """
import sys
from pathlib import Path
from test_data import HYP, make_split, write_yaml
from yolo_accel.data.dataset import YoloDataset
from yolo_accel.data.labels import scan_labels
from yolo_accel.data.loader import build_dataloader
from yolo_accel.data.sources import list_images, load_data_config
root = Path(sys.argv[1])
make_split(root, "train")
cfg = load_data_config(write_yaml(root / "d.yaml", train="images/train", names=["a"]))
dataset = YoloDataset(scan_labels(list_images(cfg, "train")), imgsz=64, augment=True, hyp=HYP, seed=3)
loader = build_dataloader(dataset, batch_size=2, workers=2, shuffle=True, seed=3)
batch = next(iter(loader))  # workers started, the loader left open in a global
"""


def test_a_script_exits_with_a_loader_still_open(tmp_path):
    """Python's exit signals the workers and waits for them; workers that outlive stop signals must still leave."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", EXIT_WITH_OPEN_LOADER, str(tmp_path / "ds")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr


def coloured_images(root, count):
    colours = np.random.default_rng(0).integers(0, 200, (count, 3))
    for i in range(count):
        size = [(64, 48), (48, 64), (80, 60)][i % 3]
        rows = write_image(root / "images" / "train" / f"{i}.png", size=size, color=tuple(colours[i].tolist()),
                           boxes=[(8, 8, 30, 30)])
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    cfg = load_data_config(write_yaml(root / "d.yaml", train="images/train", names=["a"]))
    return scan_labels(list_images(cfg, "train"))


@pytest.fixture
def twelve_images(tmp_path):
    return coloured_images(tmp_path / "twelve", 12)


@pytest.fixture
def fifty_images(tmp_path):
    return coloured_images(tmp_path / "fifty", 50)


def test_a_batch_decodes_each_file_once_and_equals_its_samples_one_by_one(twelve_images):
    dataset = YoloDataset(twelve_images, imgsz=64, augment=True, hyp=replace(HYP, mixup=0.5))
    decoded = []
    load_image = dataset.load_image
    dataset.load_image = lambda i: decoded.append(i) or load_image(i)
    keys = [(0, i) for i in (3, 1, 4, 0, 5, 9, 2, 6)]
    batch = dataset.__getitems__(keys)
    assert len(batch) == 8 and len(decoded) == len(set(decoded))  # partners shared within the batch decode once
    assert not set(decoded) <= {i for _, i in keys}  # partners come from the whole dataset, as YOLOv5 draws them
    for key, sample in zip(keys, batch, strict=True):  # a function of the keys alone
        alone = dataset[key]
        assert np.array_equal(sample[0], alone[0].permute(1, 2, 0)) and torch.equal(sample[1], alone[1])


def test_batches_are_the_same_for_any_worker_count(twelve_images):
    def epoch(workers):
        dataset = YoloDataset(twelve_images, imgsz=64, augment=True, hyp=HYP, seed=5)
        loader = build_dataloader(dataset, batch_size=8, workers=workers, shuffle=True, seed=5)
        loader.batch_sampler.sampler.set_epoch(1)
        return [(batch.images, batch.targets) for batch in loader]

    for a, b in zip(epoch(0), epoch(2), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_hsv_left_to_the_device_stage_matches_hsv_in_the_workers(twelve_images):
    def first_batch(on_device):
        dataset = YoloDataset(twelve_images, imgsz=64, augment=True, hyp=HYP, seed=1)
        dataset.hsv_on_device = on_device
        return next(iter(build_dataloader(dataset, batch_size=8, workers=0, shuffle=True, seed=1)))

    in_workers, deferred = first_batch(False), first_batch(True)
    assert in_workers.hsv_gains is None and deferred.hsv_gains.shape == (8, 3)
    assert torch.equal(in_workers.targets, deferred.targets)  # flips and geometry stay in the workers
    assert not torch.equal(in_workers.images, deferred.images)
    coloured = apply_hsv_batch(deferred.images, deferred.hsv_gains)
    assert (coloured.int() - in_workers.images.int()).abs().max() <= 1


def test_quad_tiles_four_samples_or_upsamples_one(twelve_images):
    dataset = YoloDataset(twelve_images, imgsz=64, augment=True, hyp=replace(HYP, mosaic=0.0, fliplr=0.0,
                                                                            hsv_h=0, hsv_s=0, hsv_v=0))
    keys = [(0, i) for i in range(8)]
    singles = dataset.__getitems__(keys)
    dataset.quad = True
    quads = dataset.__getitems__(keys)
    assert len(quads) == 2
    for group, (image, labels, *_) in zip((singles[:4], singles[4:]), quads):
        assert image.shape == (128, 128, 3)
        if np.array_equal(image[:64, :64], group[0][0]):  # tiled: each sample in its quarter, boxes halved
            assert np.array_equal(image[64:, :64], group[1][0]) and np.array_equal(image[:64, 64:], group[2][0])
            assert len(labels) == sum(len(s[1]) for s in group)
            first = group[1][1][0, 2:]  # bottom left: y moves down half the image
            torch.testing.assert_close(labels[len(group[0][1]), 2:],
                                       torch.stack((first[0] / 2, first[1] / 2 + 0.5, first[2] / 2, first[3] / 2)))
        else:  # the first sample, twice the size, boxes unchanged (normalised)
            assert torch.equal(labels, group[0][1])


def test_an_image_that_fails_to_decode_is_named_and_skipped(twelve_images, caplog):
    broken = twelve_images.images[4]
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg any more")  # changed after the scan
    dataset = YoloDataset(twelve_images, imgsz=64, augment=True, hyp=HYP)
    with caplog.at_level(logging.WARNING, logger="yolo_accel"):
        batch = dataset.__getitems__([(0, i) for i in range(10)])
    assert len(batch) == 10 and f"{broken}: cannot be decoded" in caplog.text
    validation = YoloDataset(twelve_images, imgsz=64, rect=True, batch_size=4)
    position = validation.files.index(broken)
    image, labels, path, shapes, _ = validation.__getitems__([position])[0]
    assert path == str(broken) and len(labels) == 0 and (image == 114).all() and shapes is not None


def test_a_batch_pool_holds_the_batches_four_eight_twelve_and_sixteen_places_earlier():
    sampler = EpochSampler(37, shuffle=True, seed=2)
    batches = list(PoolBatchSampler(sampler, batch_size=2, drop_last=False))  # epoch 0: nothing before it
    assert len(batches) == 19 and POOL_STRIDE == 4 and POOL_DEPTH == 4
    indices = [[key.index for key in batch] for batch in batches]
    assert sorted(i for batch in indices for i in batch) == list(range(37))
    for k, batch in enumerate(batches):
        assert all(key.epoch == 0 and key.batch == k and key.pool is batch[0].pool for key in batch)
        expected = []
        for depth in (1, 2, 3, 4):
            expected += indices[k - 4 * depth] if k >= 4 * depth else [-1, -1]
        assert list(batch[0].pool) == expected
    last = batches[-1][0].pool  # batch 18: batches 14, 10, 6 and 2
    assert last == (*indices[14], *indices[10], *indices[6], *indices[2])

    sampler.set_epoch(1)  # its first pools reach back into epoch 0, made up to 20 batches (5 whole strides)
    following = list(PoolBatchSampler(sampler, batch_size=2, drop_last=False))
    history = indices + [indices[15]] + [[key.index for key in batch] for batch in following]
    assert following[0][0].pool == (*history[16], *history[12], *history[8], *history[4])
    assert following[3][0].pool == (*history[19], *history[15], *history[11], *history[7])
    assert following[5][0].pool == (*history[21], *history[17], *history[13], *history[9])
    assert following[2][0].pool[:2] == (*indices[18], -1)  # epoch 0's last batch is short: one image
    sampler.set_weights(np.ones(37))  # an order drawn by weights: no reach into the previous epoch
    assert PoolBatchSampler(sampler, batch_size=2, drop_last=False).previous_batches() == []


def test_mosaic_partners_come_from_the_pool_and_each_image_is_decoded_once_while_pools_need_it(fifty_images):
    dataset = YoloDataset(fifty_images, imgsz=64, augment=True, hyp=replace(HYP, mosaic=1.0), seed=4)
    loader = build_dataloader(dataset, batch_size=2, workers=0, shuffle=True, seed=4)
    keys = list(loader.batch_sampler)
    decoded = []
    load_image = dataset.load_image
    dataset.load_image = lambda i: decoded.append(i) or load_image(i)
    full = POOL_STRIDE * POOL_DEPTH  # from this batch on every pool slot holds an image
    later = []
    for k, batch in enumerate(keys):
        start = len(decoded)
        dataset.__getitems__(batch)
        if k >= full:
            allowed = {key.index for key in batch} | set(batch[0].pool)
            assert set(decoded[start:]) <= allowed  # no partner from outside the pool
            later += decoded[start:]
    assert len(later) == len(set(later)) > 0  # held from batch to batch: none decoded twice
    uniform = YoloDataset(fifty_images, imgsz=64, augment=True, hyp=replace(HYP, mosaic=1.0), seed=4)
    counted = []
    uniform.load_image = lambda i: counted.append(i) or YoloDataset.load_image(uniform, i)
    for batch in keys:
        uniform.__getitems__([(key.epoch, key.index) for key in batch])  # no pool: YOLOv5's draw
    assert len(decoded) < 0.7 * len(counted)

    loader.batch_sampler.sampler.set_epoch(1)  # the next epoch's first pools: the last batches of this one
    start = len(decoded)
    for batch in loader.batch_sampler:
        assert -1 not in batch[0].pool
        dataset.__getitems__(batch)
    assert len(decoded) - start <= len(dataset)  # about once each: no uniform draws fill the first pools


@pytest.mark.parametrize("workers", [2, 3])
def test_batches_with_pools_are_the_same_for_any_worker_count_and_held_images(fifty_images, workers):
    """Whether a process held a pool's images (0 or 2 workers) or decodes some again (3 workers), and whatever
    its memory allows it to hold, a batch is the same as one built from nothing."""
    def epoch(workers, budget=None):
        dataset = YoloDataset(fifty_images, imgsz=64, augment=True, hyp=HYP, seed=6)
        if budget is not None:
            dataset._held = HeldImages(budget)
        loader = build_dataloader(dataset, batch_size=2, workers=workers, shuffle=True, seed=6)
        loader.batch_sampler.sampler.set_epoch(1)
        return [(batch.images, batch.targets) for batch in loader], list(loader.batch_sampler)

    single, keys = epoch(0)
    tight, _ = epoch(0, budget=4 * 64 * 64 * 3)
    for (a, at), (b, bt), (c, ct) in zip(single, epoch(workers)[0], tight, strict=True):
        assert torch.equal(a, b) and torch.equal(at, bt) and torch.equal(a, c) and torch.equal(at, ct)
    fresh = YoloDataset(fifty_images, imgsz=64, augment=True, hyp=HYP, seed=6)
    for k in (POOL_STRIDE * POOL_DEPTH, len(keys) - 1):
        batch = fresh.__getitems__([Key(*key) for key in keys[k]])  # a process that holds nothing
        fresh._held = None
        for i, (image, labels, *_) in enumerate(batch):
            assert np.array_equal(image, single[k][0][i].permute(1, 2, 0).numpy())
            assert torch.equal(labels[:, 1:], single[k][1][single[k][1][:, 0] == i][:, 1:])


def test_held_images_stay_within_their_budget_and_go_with_the_epoch():
    held = HeldImages(budget=3 * 100)
    image = (np.zeros((10, 10, 1), np.uint8), (10, 10), (10, 10))
    pool = (-1, -1) * POOL_DEPTH
    keys = [Key(0, 7, 20, pool), Key(0, 8, 20, pool)]
    decoded = held.start(keys[0]) | {7: image, 8: image, 9: image}  # 9: drawn from outside the pool
    held.keep(keys, decoded)
    assert set(held.images) == {7, 8}
    pool = (7, 8) + (-1, -1) * (POOL_DEPTH - 1)
    keys = [Key(0, 1, 24, pool), Key(0, 2, 24, pool)]
    decoded = held.start(keys[0])
    assert set(decoded) == {7, 8}
    held.keep(keys, decoded | {1: image, 2: image})
    assert len(held.images) == 3 and {1, 2} <= set(held.images)  # the newest first, within the budget
    empty = (-1,) * len(pool)
    decoded = held.start(Key(0, 5, 41, empty))
    held.keep([Key(0, 5, 41, empty)], decoded | {5: image})
    assert set(held.images) == {5}  # batches after 41 draw from batch 26 on: 25 and older are gone
    assert set(held.start(Key(1, 3, 0, pool))) == {5}  # the next epoch's first pools reach back into this one
    held.keep([Key(1, 3, 0, empty)], {5: image, 3: image})
    assert held.tags == {5: -1, 3: 0}
    decoded = held.start(Key(1, 4, 15, empty))
    held.keep([Key(1, 4, 15, empty)], decoded | {4: image})
    assert set(held.images) == {3, 4}  # batches after 15 draw from batch 0 on: the previous epoch's are gone
    assert held.start(Key(3, 3, 0, pool)) == {}  # an epoch after another: nothing held serves it


def test_freed_memory_goes_back_to_the_os_once_a_worker_has_grown(monkeypatch):
    assert loader_module.resident_bytes() > 50 << 20  # this process, read from /proc
    trims, resident = [], [500 << 20]
    monkeypatch.setattr(loader_module, "_malloc_trim", lambda: trims.append)
    monkeypatch.setattr(loader_module, "resident_bytes", lambda: resident[0])
    monkeypatch.setattr(loader_module, "_trim_above", 0)
    loader_module.release_freed_memory()  # the first call trims and sets the bar 64 MB higher
    resident[0] += 60 << 20
    loader_module.release_freed_memory()
    assert trims == [0]
    resident[0] += 8 << 20
    loader_module.release_freed_memory()
    assert trims == [0, 0] and loader_module._trim_above == resident[0] + loader_module.TRIM_SLACK
    loader_module.release_freed_memory()
    assert len(trims) == 2


def test_a_batch_lost_with_its_worker_is_reported_as_the_worker():
    """A worker killed while its batch is in flight surfaces as an EOFError (its shared memory cannot be fetched);
    that is reported as the dead worker, which the training loop saves and explains."""
    from yolo_accel.data.loader import lost_worker_report, worker_failures_between_batches

    dataset = torch.utils.data.TensorDataset(torch.arange(64.0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1)
    with worker_failures_between_batches():
        batches = iter(loader)
        next(batches)
        assert lost_worker_report(EOFError()) is None  # every worker alive: not a lost worker
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
        report = lost_worker_report(EOFError())
        del batches
    assert report is not None and "killed by signal" in str(report)
    assert lost_worker_report(ValueError("other")) is None
