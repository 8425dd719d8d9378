"""Training end to end on a tiny synthetic dataset: outputs, resume exactness, extension, transfer, trackers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REFERENCE, ROOT
from safetensors.torch import load_file

import yolo_accel.precision as precision_module
from yolo_accel import train as train_module
from yolo_accel.checkpoint import load_model, read_weights, save_weights
from yolo_accel.config import TrainConfig
from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.model import build_model
from yolo_accel.precision import check_amp, choose_mixed_precision
from yolo_accel.results import RESULT_COLUMNS, read_results
from yolo_accel.train import TrainingInterrupted, train

TINY = str(REFERENCE / "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data"), train_images=24, val_images=8, imgsz=64, seed=3)


def tiny_config(data: Path, project: Path, **overrides) -> TrainConfig:
    options = dict(data=str(data), model=TINY, epochs=2, batch_size=8, imgsz=64, workers=0, project=str(project),
                   noautoanchor=True)
    return TrainConfig(**{**options, **overrides})


def cli_args(data: Path, project: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "train", "--data", str(data), "--cfg", TINY, "--batch-size", "8",
            "--img", "64", "--workers", "1", "--project", str(project), "--noautoanchor", *extra]


def latest_state(run: Path) -> Path:
    return run / "state" / json.loads((run / "state" / "latest.json").read_text())["name"]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    snapshot = latest_state(run)
    return {**load_file(str(snapshot / "model.safetensors")),
            **{f"ema.{k}": v for k, v in load_file(str(snapshot / "ema.safetensors")).items()}}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def test_train_writes_the_run_folder(tiny_data, tmp_path, caplog):
    with caplog.at_level("INFO", logger="yolo_accel"):
        run = train(tiny_config(tiny_data, tmp_path))
    assert run == tmp_path / "exp"
    rows = read_results(run / "results.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    header = (run / "results.csv").read_text().splitlines()[0]
    assert [h.strip() for h in header.split(",")] == ["epoch", *RESULT_COLUMNS]
    assert all(0 < rows[-1][k] < 10 for k in ("train/box_loss", "train/obj_loss", "train/cls_loss"))
    for name in ("last", "best"):
        model = load_model(run / "weights" / f"{name}.safetensors")
        assert model.nc == 6 and model.names[0] == "circle"
        assert next(model.parameters()).dtype == torch.float32  # stored in fp16, as YOLOv5 strips them
        stored, metadata = read_weights(run / "weights" / f"{name}.safetensors")
        assert stored["model.0.conv.weight"].dtype == torch.float16 and metadata["dtype"] == "float16"
    text = caplog.text  # what YOLOv5 users look for
    assert "hyperparameters: lr0=0.01, lrf=0.01, momentum=0.937" in text
    assert "tiny summary: 214 layers" in text and "GFLOPs" in text
    assert ("optimizer: SGD(lr=0.01) with parameter groups 57 weight(decay=0.0), 60 weight(decay=0.0005), "
            "60 bias") in text
    assert "2 epochs completed in 0.0" in text
    assert (run / "hyp.yaml").is_file() and "epochs: 2" in (run / "opt.yaml").read_text()
    assert TrainConfig.from_dict(yaml.safe_load((run / "opt.yaml").read_text()), "opt.yaml").epochs == 2
    assert "mAP50-95" in caplog.text and "Validating" in caplog.text
    assert train(tiny_config(tiny_data, tmp_path)) == tmp_path / "exp2"


def test_noval_still_validates_best_at_the_end_and_quad_trains(tiny_data, tmp_path, caplog):
    with caplog.at_level("INFO", logger="yolo_accel"):
        run = train(tiny_config(tiny_data, tmp_path, epochs=1, noval=True, quad=True, save_fp32=True))
    assert "Validating" in caplog.text and "mAP50-95" in caplog.text  # YOLOv5 validates best.pt even with --noval
    stored, metadata = read_weights(run / "weights" / "best.safetensors")
    assert stored["model.0.conv.weight"].dtype == torch.float32 and "dtype" not in metadata


def test_resume_extends_a_finished_run(tiny_data, tmp_path, caplog):
    run = train(tiny_config(tiny_data, tmp_path, epochs=1))
    # a kill after the epoch-1 row was written but before its state snapshot: resume redoes epoch 1, one row
    lines = (run / "results.csv").read_text().splitlines(keepends=True)
    (run / "results.csv").write_text("".join(lines) + lines[-1].replace(" 0,", " 1,", 1) + lines[-1][:30])
    with caplog.at_level("INFO", logger="yolo_accel"):
        train(TrainConfig(resume=str(run), epochs=2))
    assert "re-planned over 2 epochs" in caplog.text
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [0, 1]


def test_transfer_learning_reports_matched_items(tiny_data, tmp_path, caplog):
    source = build_model(TINY, nc=3)
    weights = save_weights(source, tmp_path / "w.safetensors")
    with caplog.at_level("INFO", logger="yolo_accel"):
        train(tiny_config(tiny_data, tmp_path, weights=str(weights), epochs=1, noval=True))
    # every key except the 3 Detect convs (nc differs) and the anchors (--cfg given) transfers
    total = len(build_model(TINY, nc=6).state_dict())
    assert f"Transferred {total - 7}/{total} items from {weights}" in caplog.text


def train_stopped_in_epoch_1(config: TrainConfig, after_batches: int, monkeypatch) -> None:
    """Train `config` with a stop request once epoch 1 has run `after_batches` batches (the state is saved)."""
    original = train_module.train_one_epoch

    def stop_in_epoch_1(plan, training, loader, epochs, stop_requested, **kwargs):
        if training.loop.epoch == 1:
            stop_requested = lambda: training.loop.batch >= after_batches  # noqa: E731
        return original(plan, training, loader, epochs, stop_requested, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", stop_in_epoch_1)
    with pytest.raises(TrainingInterrupted):
        train(config)
    monkeypatch.undo()


def test_stopped_mid_epoch_then_resumed_equals_straight_in_process(tiny_data, tmp_path, monkeypatch):
    """Train 2 epochs == train into epoch 1, stop after its second batch (state saved), resume, finish."""
    train(tiny_config(tiny_data, tmp_path / "a", noval=True))
    train_stopped_in_epoch_1(tiny_config(tiny_data, tmp_path / "b", noval=True), after_batches=2,
                             monkeypatch=monkeypatch)
    run = tmp_path / "b" / "exp"
    loop = json.loads((latest_state(run) / "trainer.json").read_text())["loop"]
    assert (loop["epoch"], loop["batch"]) == (1, 2)
    train(TrainConfig(resume=str(run)))
    assert max_difference(final_weights(tmp_path / "a" / "exp"), final_weights(run)) <= 1e-6
    assert torch.are_deterministic_algorithms_enabled() is False  # training left the process as it found it


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tiny_data, tmp_path):
    """SIGKILL at an arbitrary point, then --resume: final weights equal an uninterrupted run's."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = subprocess.run(cli_args(tiny_data, tmp_path / "a", "--epochs", "4"), env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout + straight.stderr

    run = tmp_path / "b" / "exp"
    victim = subprocess.Popen(cli_args(tiny_data, tmp_path / "b", "--epochs", "4"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "state" / "latest.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere into the next epoch
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    epoch_at_kill = json.loads((latest_state(run) / "trainer.json").read_text())["loop"]["epoch"]
    assert epoch_at_kill < 4, "the run finished before it could be killed"

    resumed = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--resume", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming training from" in resumed.stdout
    assert max_difference(final_weights(tmp_path / "a" / "exp"), final_weights(run)) <= 1e-6
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [0, 1, 2, 3]


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resume_continues_from_that_batch(tiny_data, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = subprocess.run(cli_args(tiny_data, tmp_path / "a", "--epochs", "3", "--batch-size", "4"), env=env,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout + straight.stderr

    run = tmp_path / "b" / "exp"
    victim = subprocess.Popen(cli_args(tiny_data, tmp_path / "b", "--epochs", "3", "--batch-size", "4"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (run / "state" / "latest.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGTERM)  # as `timeout` or a scheduler sends it: the loader workers get it too
    output = victim.communicate(timeout=300)[0]
    assert victim.returncode == 0, output
    assert "Traceback" not in output and "killed by signal" not in output, output
    loop = json.loads((latest_state(run) / "trainer.json").read_text())["loop"]
    assert loop["epoch"] < 3 and loop["batch"] > 0, "SIGTERM should have stopped the run inside an epoch"
    assert "state saved" in output

    # --resume with no path picks the latest run under --project
    resumed = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--resume", "--project",
                              str(tmp_path / "b")], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at epoch {loop['epoch']}, batch {loop['batch']}" in resumed.stdout
    assert max_difference(final_weights(tmp_path / "a" / "exp"), final_weights(run)) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_trackers_write_their_files_offline(tiny_data, tmp_path, monkeypatch, tracker):
    pytest.importorskip(tracker)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(tiny_config(tiny_data, tmp_path, epochs=1, noval=True, log_with=tracker))
    # every plot the run made (an untrained model draws no PR curves)
    expected = {p.stem for p in run.glob("*") if p.stem in ("train_batch0", "val_batch0_pred", "PR_curve",
                                                              "confusion_matrix", "results")}
    assert {"train_batch0", "val_batch0_pred", "confusion_matrix", "results"} <= expected
    if tracker == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        scalars, images = set(), set()
        for events in run.rglob("events.out.tfevents.*"):
            accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
            accumulator.Reload()
            scalars |= set(accumulator.Tags()["scalars"])
            images |= set(accumulator.Tags()["images"])
        assert "metrics/mAP_0.5" in scalars and expected <= images
    else:
        (offline,) = (run / "wandb").glob("offline-run-*")
        assert list(offline.glob("run-*.wandb"))
        media = {p.name.rsplit("_", 2)[0] for p in (offline / "files" / "media" / "images").glob("*.png")}
        assert expected <= media, media


def test_unknown_or_missing_trackers_are_named():
    from yolo_accel.config import ConfigError
    from yolo_accel.trackers import TRACKERS, installed, resolve_trackers

    assert {"tensorboard", "wandb", "comet_ml", "mlflow", "clearml", "aim", "dvclive"} <= set(TRACKERS)
    with pytest.raises(ConfigError, match="--log-with neptune: not a tracker Accelerate knows"):
        resolve_trackers("neptune")
    missing = next((t for t in TRACKERS if not installed(t)), None)
    if missing:
        with pytest.raises(ConfigError, match=f"--log-with {missing}: the .* package is not installed"):
            resolve_trackers(f"tensorboard,{missing}")
    assert resolve_trackers("none") == [] and set(resolve_trackers("all")) >= {"tensorboard"}


def test_callbacks_see_every_epoch_and_can_stop_training(tiny_data, tmp_path):
    from yolo_accel import YOLO

    seen = []

    def record(event):
        seen.append((event.name, event.epoch, round(event.metrics.get("metrics/mAP_0.5", -1), 3)))

    def stop_after_first(event):
        event.stop = event.epoch >= 0

    model = YOLO(TINY)
    for name in ("on_train_start", "on_train_epoch_end", "on_fit_epoch_end", "on_model_save", "on_train_end"):
        model.add_callback(name, record)
    model.add_callback("on_fit_epoch_end", stop_after_first)
    run = model.train(data=str(tiny_data), epochs=3, batch_size=8, imgsz=64, workers=0, project=str(tmp_path),
                      noautoanchor=True)
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [0]  # stopped after the first epoch
    names = [name for name, *_ in seen]
    assert names == ["on_train_start", "on_train_epoch_end", "on_model_save", "on_fit_epoch_end", "on_train_end"]
    assert seen[3][2] >= 0 and seen[4][2] >= 0  # metrics reached the hooks
    with pytest.raises(ValueError, match="unknown callback event 'on_epoch'"):
        model.add_callback("on_epoch", record)


def test_training_flags_run_together(tiny_data, tmp_path, caplog):
    with caplog.at_level("INFO", logger="yolo_accel"):
        run = train(tiny_config(tiny_data, tmp_path, image_weights=True, multi_scale=True, cos_lr=True,
                                label_smoothing=0.1, optimizer="AdamW", close_mosaic=1, save_period=1,
                                freeze=(10,), cache="ram", noautoanchor=False))
    assert (run / "weights" / "epoch0.safetensors").is_file() and (run / "weights" / "epoch1.safetensors").is_file()
    assert "freezing model.9.cv2.conv.weight" in caplog.text and "freezing model.10." not in caplog.text
    assert "AutoAnchor" in caplog.text
    run = train(tiny_config(tiny_data, tmp_path, rect=True, single_cls=True, optimizer="Adam", epochs=1))
    assert load_model(run / "weights" / "last.safetensors").nc == 1


def test_bad_options_are_refused_before_training(tiny_data, tmp_path):
    from yolo_accel.config import ConfigError

    with pytest.raises(ConfigError, match="--optimizer must be"):
        train(tiny_config(tiny_data, tmp_path, optimizer="Lion"))
    with pytest.raises(ConfigError, match=r"--batch-size must be positive"):
        train(tiny_config(tiny_data, tmp_path, batch_size=0))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"AutoBatch.*needs a CUDA device"):
            train(tiny_config(tiny_data, tmp_path, batch_size=-1))
        with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
            train(tiny_config(tiny_data, tmp_path, sync_bn=True))
        with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
            train(tiny_config(tiny_data, tmp_path, mixed_precision="fp16"))
    with pytest.raises(ConfigError, match="--mixed-precision must be auto, no, fp16 or bf16"):
        train(tiny_config(tiny_data, tmp_path, mixed_precision="fp8"))
    assert not (tmp_path / "exp").exists()


def test_auto_mixed_precision_follows_the_launcher_then_the_hardware(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert choose_mixed_precision("no", use_cpu=False) == "no"
    assert choose_mixed_precision("auto", use_cpu=False) == "fp16"
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert choose_mixed_precision("auto", use_cpu=True) == "no"  # bf16 cost accuracy: the user's choice on CPU
    assert choose_mixed_precision("bf16", use_cpu=True) == "bf16"
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert choose_mixed_precision("auto", use_cpu=True) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate launch --mixed_precision no
    assert choose_mixed_precision("auto", use_cpu=False) == "no"
    assert choose_mixed_precision("bf16", use_cpu=False) == "bf16"  # an explicit flag wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # a launch config for GPUs, run on CPU processes
    assert choose_mixed_precision("auto", use_cpu=False) == "fp16"
    assert choose_mixed_precision("auto", use_cpu=True) == "no"


def test_one_process_trains_in_bf16_then_validates_and_trains_in_fp32(tiny_data, tmp_path, caplog):
    from yolo_accel.val import validate

    with caplog.at_level("INFO", logger="yolo_accel"):
        run = train(tiny_config(tiny_data, tmp_path, epochs=1, mixed_precision="bf16", noplots=True))
    assert "bf16 autocast on cpu" in caplog.text
    _, (result,) = validate(str(tiny_data), [str(run / "weights" / "last.safetensors")], imgsz=64,
                            project=str(tmp_path / "val"), workers=0, plots=False)
    assert result.images > 0
    train(tiny_config(tiny_data, tmp_path, epochs=1, mixed_precision="no", noplots=True))


def test_amp_check_passes_bf16_and_catches_a_broken_autocast(monkeypatch):
    torch.manual_seed(0)
    model = build_model(TINY, nc=3)
    assert check_amp(model, torch.device("cpu"), 64, torch.bfloat16)
    original = model.forward

    def drifting(images, *args, **kwargs):  # what a broken low-precision kernel would do
        output = original(images, *args, **kwargs)
        return output + 0.2 * images.shape[-1] if torch.is_autocast_enabled("cpu") else output

    monkeypatch.setattr(model, "forward", drifting)
    assert not check_amp(model, torch.device("cpu"), 64, torch.bfloat16)


def test_a_loss_that_turns_nan_stops_training_before_saving_it(tiny_data, tmp_path, monkeypatch):
    from yolo_accel.engine import NonFiniteLoss
    from yolo_accel.loss import DetectionLoss

    original = DetectionLoss.forward
    calls = []

    def diverging(self, predictions, targets):
        loss, items = original(self, predictions, targets)
        calls.append(1)
        if len(calls) > 4:  # after the first epoch (3 training batches, one validation batch)
            return loss * float("nan"), items * float("nan")
        return loss, items

    monkeypatch.setattr(DetectionLoss, "forward", diverging)
    with pytest.raises(NonFiniteLoss, match=r"non-finite .* at epoch 1, batch"):
        train(tiny_config(tiny_data, tmp_path))
    run = tmp_path / "exp"
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [0]
    saved = load_model(run / "weights" / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.state_dict().values())


def test_resume_falls_back_to_the_snapshot_before_a_damaged_one(tiny_data, tmp_path, caplog):
    train(tiny_config(tiny_data, tmp_path / "a", epochs=3, noval=True))
    run = train(tiny_config(tiny_data, tmp_path / "b", epochs=2, noval=True))
    latest = latest_state(run)
    (latest / "optimizer.safetensors").write_bytes(b"\x00" * 64)  # damaged after the end of epoch 1
    with caplog.at_level("WARNING", logger="yolo_accel"):
        train(TrainConfig(resume=str(run), epochs=3))
    assert "optimizer.safetensors: damaged or unreadable" in caplog.text and "the snapshot before it" in caplog.text
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [0, 1, 2]  # epoch 1 redone, one row each
    assert max_difference(final_weights(tmp_path / "a" / "exp"), final_weights(run)) <= 1e-6
