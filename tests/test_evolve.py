"""Hyperparameter evolution: YOLOv5's mutation rules, the locked ledger, resume, and concurrent workers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REFERENCE

import yolo_accel.evolve as evolve_module
import yolo_accel.plots as plots
from yolo_accel.config import ConfigError, TrainConfig, load_hyp
from yolo_accel.data.demo import write_demo_dataset
from yolo_accel.evolve import (
    BOUNDS,
    RESULT_KEYS,
    append_row,
    clamp,
    evolve,
    locked,
    mutate,
    read_ledger,
    select_parent,
    warn_rungs_in_warmup,
)
from yolo_accel.plots import compute_curve
from yolo_accel.rungs import keep_training, read_rungs, rung_epochs
from yolo_accel.train import with_model_defaults


def test_mutation_follows_yolov5_rules():
    hyp = clamp(load_hyp("scratch-low") | {"anchors": 3.0})
    rng = np.random.default_rng(0)
    children = [mutate(hyp, rng) for _ in range(200)]
    for child in children:
        assert child != hyp  # something always changes
        for key, value in child.items():
            gain, low, high = BOUNDS[key]
            assert low <= value <= high and value == round(value, 5)
            assert value == float(f"{value:20.5g}")  # what its evolve.csv row holds is what it trains with
            if gain == 0:
                assert value == hyp[key]  # fixed keys never move
            elif hyp[key] and low < value < high:
                assert 0.3 - 1e-4 <= value / hyp[key] <= 3.0 + 1e-4  # factor clipped to [0.3, 3]
    changed = np.mean([[c[k] != hyp[k] for k in hyp if BOUNDS[k][0]] for c in children])
    assert 0.6 < changed < 0.9  # each gene mutates with probability 0.8 (some factors round back to 1)
    again = [mutate(hyp, np.random.default_rng(0)) for _ in range(1)]
    assert again[0] == children[0]  # seeded: reproducible


def test_parent_is_drawn_from_the_top_five_by_fitness():
    rows = np.zeros((8, 9))
    rows[:, 2] = np.arange(8) / 10  # mAP50
    rows[:, 3] = np.arange(8) / 20  # mAP50-95
    rows[:, 7] = np.arange(8)  # a hyp column that names the row
    picks = {int(select_parent(rows, np.random.default_rng(s))[7]) for s in range(200)}
    assert picks <= {3, 4, 5, 6, 7} and 7 in picks
    mean = select_parent(rows, np.random.default_rng(0), parent="weighted")
    assert 3 < mean[7] < 7


def write_rows(path: Path, worker: int, count: int) -> None:
    for i in range(count):
        with locked(path):
            append_row(path, {"lr0": worker + i / 1000, "momentum": 0.9}, (0.1,) * 7)


def test_concurrent_appends_lose_and_tear_nothing(tmp_path):
    ledger = tmp_path / "evolve.csv"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_rows, args=(ledger, w, 40)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    header, rows = read_ledger(ledger)
    assert header == [*RESULT_KEYS, "lr0", "momentum"] and rows.shape == (120, 9)
    assert sorted(rows[:, 7].round(3).tolist()) == sorted(w + i / 1000 for w in range(3) for i in range(40))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data"), train_images=16, val_images=8, imgsz=64, seed=3)


def tiny_config(data: Path) -> TrainConfig:
    return TrainConfig(data=str(data), model=str(REFERENCE / "tiny.yaml"), epochs=1, batch_size=8, imgsz=64, workers=0,
                       noautoanchor=True)


def test_evolve_writes_ledger_best_hyp_and_plot_then_continues(tiny_data, tmp_path):
    run = evolve(tiny_config(tiny_data), generations=2, project=str(tmp_path), seed=0)
    header, rows = read_ledger(run / "evolve.csv")
    assert header[:7] == list(RESULT_KEYS) and "lr0" in header and "anchors" not in header  # --noautoanchor
    assert rows.shape[0] == 2 and (run / "evolve.png").stat().st_size > 10_000
    best = (run / "hyp_evolve.yaml").read_text()
    assert best.startswith("# YOLOv5 Hyperparameter Evolution Results\n# Best generation:")
    assert load_hyp(run / "hyp_evolve.yaml")["lr0"] > 0  # loadable by `train --hyp`
    assert evolve(tiny_config(tiny_data), generations=3, project=str(tmp_path), seed=1) == run  # continues
    assert read_ledger(run / "evolve.csv")[1].shape[0] == 3


@pytest.mark.slow
def test_parallel_workers_and_a_killed_worker(tiny_data, tmp_path):
    """Two workers fill one ledger; a third, killed mid-candidate, leaves every row intact."""
    run = evolve(tiny_config(tiny_data), generations=4, parallel=2, project=str(tmp_path), seed=0)
    header, rows = read_ledger(run / "evolve.csv")
    assert rows.shape == (4, len(header)) and np.isfinite(rows).all()
    lines = (run / "evolve.csv").read_text().splitlines()
    assert all(len(line.split(",")) == len(header) for line in lines)
    victim = subprocess.Popen([sys.executable, "-m", "yolo_accel.evolve", str(run), "100", "7"],
                              env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    claims = run / "evolve.claims"
    deadline = time.time() + 120
    while time.time() < deadline and not (claims.exists() and claims.read_text().strip()):
        time.sleep(0.05)
    time.sleep(1.0)  # inside its candidate's training
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    header, after = read_ledger(run / "evolve.csv")
    lines = (run / "evolve.csv").read_text().splitlines()
    assert len(lines) == len(after) + 1 and all(len(line.split(",")) == len(header) for line in lines)
    assert np.array_equal(after[:4], rows) and np.isfinite(after).all()
    left_behind = claims.read_text().split()  # its unfinished candidate's claim (unless killed between two)
    assert len(left_behind) <= 1 and all(c.split(":")[1] == str(victim.pid) for c in left_behind)
    # the next worker prunes the dead claim and adds exactly the one missing generation
    evolve(tiny_config(tiny_data), generations=len(after) + 1, project=str(tmp_path), seed=3)
    assert len(read_ledger(run / "evolve.csv")[1]) == len(after) + 1
    assert not claims.read_text().strip()
    assert yaml.safe_load((run / "opt.yaml").read_text())["epochs"] == 1


def test_rungs_and_the_keep_rule():
    assert rung_epochs(9) == (1, 3, 9) and rung_epochs(10) == (1, 3, 10) and rung_epochs(30) == (3, 10, 30)
    assert rung_epochs(2) == (1, 2) and rung_epochs(1) == (1,)
    assert keep_training([], 0.1)  # the first at a rung: nothing to judge by
    assert not keep_training([0.5], 0.1) and keep_training([0.5], 0.5)  # the second against the first
    assert not keep_training([0.5, 0.4], 0.45)  # below 0.4 + 2/3 of the way to 0.5
    assert keep_training([0.5, 0.4], 0.6) and keep_training([0.1, 0.2, 0.3, 0.4, 0.5], 0.5)
    assert not keep_training([0.1, 0.2, 0.3, 0.4, 0.5], 0.3)  # the cutoff is 0.367


def test_a_rung_within_the_warmup_is_named(caplog, tiny_data):
    with caplog.at_level("WARNING", logger="yolo_accel"):
        warn_rungs_in_warmup(with_model_defaults(TrainConfig(data="x.yaml", epochs=27)))  # rungs 3, 9, 27
        assert not caplog.records
        warn_rungs_in_warmup(with_model_defaults(TrainConfig(data="x.yaml", epochs=9)))  # rungs 1, 3, 9
        assert "at epoch 1, within the warmup (3 epochs" in caplog.text and "--epochs 27 or more" in caplog.text
        caplog.clear()
        # 16 images in batches of 4: the warmup's 100 batches take 25 epochs
        warn_rungs_in_warmup(with_model_defaults(TrainConfig(data=str(tiny_data), epochs=27, batch_size=4)))
    assert "at epoch 3, 9, within the warmup (25 epochs" in caplog.text and "--epochs 225 or more" in caplog.text


def test_halving_stops_weak_candidates_and_breeds_from_full_ones(tiny_data, tmp_path, monkeypatch):
    """The search's bookkeeping with a stand-in for training whose fitness is lr0 (so rankings are known): a
    candidate stops at the first rung where it is not in the top third; only full ones become parents."""
    trained_epochs = []

    def fake_train(config, hyp, folder, on_rung=None, rungs=(), restarts=False):
        for epochs in rungs[:-1]:
            if on_rung is not None and not on_rung(epochs, hyp["lr0"]):
                trained_epochs.append(epochs)
                return dict(zip(RESULT_KEYS, (0, 0, 0, hyp["lr0"] / 0.9, 0, 0, 0))), epochs
        trained_epochs.append(rungs[-1])
        return dict(zip(RESULT_KEYS, (0, 0, 0, hyp["lr0"] / 0.9, 0, 0, 0))), rungs[-1]

    monkeypatch.setattr(evolve_module, "train_candidate", fake_train)
    monkeypatch.setattr(plots, "plot_evolve", lambda *args: None)  # evolve.png: tested above; 3 s a redraw here
    config = replace(tiny_config(tiny_data), epochs=9)
    run = evolve(config, generations=12, project=str(tmp_path), seed=0, halving=True)
    header, full = read_ledger(run / "evolve.csv")
    stopped_header, stopped = read_ledger(run / "evolve_stopped.csv")
    assert len(full) + len(stopped) == 12 and len(stopped) > 0
    assert header[:7] == list(RESULT_KEYS) and stopped_header == [*header, "epochs"]
    assert set(stopped[:, -1]) <= {1.0, 3.0} and sorted(trained_epochs) == sorted(
        [9] * len(full) + stopped[:, -1].astype(int).tolist())
    history = read_rungs(run / "evolve_rungs.csv")
    for i, record in enumerate(history):  # every verdict follows the rule against the records before it
        if record["epochs"] < 9:
            earlier = [r["fitness"] for r in history[:i] if r["epochs"] == record["epochs"]]
            assert record["stopped"] == (not keep_training(earlier, record["fitness"]))
    assert sum(r["epochs"] for r in history if r["stopped"] or r["epochs"] == 9) < 12 * 9  # compute saved
    assert (run / "evolve_compute.png").stat().st_size > 5_000 and not list((run / "candidates").iterdir())
    assert load_hyp(run / "hyp_evolve.yaml")["lr0"] == pytest.approx(full[:, header.index("lr0")].max())


def check_promotions(history: list[dict], generations: int) -> None:
    """Successive halving's promotions: each one, when made, was among the top third of its rung's n runs with
    fewer than n // 3 gone on, or (once every candidate was drawn) the best of its rung; at the end the best of every
    rung went on."""
    for i, record in enumerate(history):
        if record["epochs"] > 3:
            low = {9: 3, 27: 9}[record["epochs"]]
            ranked = [r["candidate"] for r in sorted((r for r in history[:i] if r["epochs"] == low),
                                                     key=lambda r: -r["fitness"])]
            gone = {r["candidate"] for r in history[:i] if r["epochs"] == record["epochs"]}
            drawn = len({r["candidate"] for r in history[:i]})
            assert (record["candidate"] in ranked[:len(ranked) // 3] and len(gone) < len(ranked) // 3) or (
                drawn == generations and record["candidate"] == ranked[0])
        assert record["stopped"] == (record["epochs"] < 27)
    for low, high in ((3, 9), (9, 27)):
        best = max((r for r in history if r["epochs"] == low), key=lambda r: r["fitness"])["candidate"]
        assert any(r["candidate"] == best and r["epochs"] == high for r in history)


def test_halving_with_restarts_promotes_the_top_third_of_each_rung_and_breeds_from_first_rung_runs(
        tiny_data, tmp_path, monkeypatch, caplog):
    """`--halving --restarts` with a stand-in for training whose fitness is lr0: 12 candidates run 3 epochs, at
    most 4 of them (n // 3) 9 and 1 of those 27, plus the end's best of each rung: about a third of a plain search's
    324 candidate-epochs; every parent is drawn from all first-rung runs so far; a search too small to promote to
    the last rung still ends with one candidate trained in full."""
    runs, parent_pools = [], []

    def fake_train(config, hyp, folder, on_rung=None, rungs=()):
        assert on_rung is None and folder.name == f"epochs{config.epochs}"  # a run of its own, never stopped
        runs.append((folder.parent.name, config.epochs))
        return dict(zip(RESULT_KEYS, (0, 0, 0, hyp["lr0"] / 0.9, 0, 0, 0))), config.epochs

    real_select_parent = evolve_module.select_parent

    def select_parent(rows, rng, parent="single"):
        parent_pools.append(len(rows))
        return real_select_parent(rows, rng, parent)

    monkeypatch.setattr(evolve_module, "train_candidate", fake_train)
    monkeypatch.setattr(evolve_module, "select_parent", select_parent)
    monkeypatch.setattr(plots, "plot_evolve", lambda *args: None)  # evolve.png: tested above
    config = replace(tiny_config(tiny_data), epochs=27)
    with caplog.at_level("INFO", logger="yolo_accel"):
        run = evolve(config, generations=12, project=str(tmp_path / "a"), seed=0, halving=True, restarts=True)
    history = read_rungs(run / "evolve_rungs.csv")
    assert [(r["candidate"], r["epochs"]) for r in history] == runs
    check_promotions(history, 12)
    counts = [sum(r["epochs"] == e for r in history) for e in (3, 9, 27)]
    assert counts[0] == 12 and 4 <= counts[1] <= 5 and 1 <= counts[2] <= 2
    assert sum(r["spent"] for r in history) == 3 * counts[0] + 9 * counts[1] + 27 * counts[2] <= 99 + 9 + 27
    assert compute_curve(history)[0][-1] == sum(r["spent"] for r in history)
    assert parent_pools == list(range(1, 12))  # candidate k drawn from the k first-rung runs before it
    header, full = read_ledger(run / "evolve.csv")
    stopped_header, stopped = read_ledger(run / "evolve_stopped.csv")
    assert stopped_header == [*header, "epochs"] and sorted(stopped[:, -1]) == [3.0] * 12 + [9.0] * counts[1]
    assert len(full) == counts[2] and load_hyp(run / "hyp_evolve.yaml")["lr0"] == full[:, header.index("lr0")].max()
    # paused candidates keep their hyps (a longer search may promote them), never a run's folder
    assert sorted(p.name for p in (run / "candidates").rglob("*") if p.is_file()) == ["candidate.yaml"] * (
        12 - counts[2])
    assert "candidate 12/12" in caplog.text and "9/27 epochs (a rung's run)" in caplog.text
    runs.clear()
    small = evolve(config, generations=4, project=str(tmp_path / "b"), seed=0, halving=True, restarts=True)
    assert [e for _, e in runs][:5] == [3, 3, 3, 9, 3]  # 4 // 3 = 1 goes on to 9; then the end's promotions
    check_promotions(read_rungs(small / "evolve_rungs.csv"), 4)
    assert len(read_ledger(small / "evolve.csv")[1]) >= 1


def test_halving_with_restarts_breeds_from_the_longest_rung_with_five_runs(tiny_data, tmp_path, monkeypatch):
    """36 candidates: 12 go on to 9 epochs and 4 to 27. Parents come from the first-rung runs until 5 runs of 9
    epochs are recorded, then from those only (each row the 9-epoch run's, not the candidate's 3-epoch one)."""
    pools = []

    def fake_train(config, hyp, folder, on_rung=None, rungs=()):
        return dict(zip(RESULT_KEYS, (0, 0, 0, hyp["lr0"] * config.epochs, 0, 0, 0))), config.epochs

    real_select_parent = evolve_module.select_parent

    def select_parent(rows, rng, parent="single"):
        history = read_rungs(tmp_path / "exp" / "evolve_rungs.csv")
        longest = next(e for e in (27, 9, 3) if sum(r["epochs"] == e for r in history) >= 5 or e == 3)
        expected = sorted(r["fitness"] for r in history if r["epochs"] == longest)
        assert np.allclose(sorted(0.1 * rows[:, 2] + 0.9 * rows[:, 3]), expected, rtol=1e-5)
        pools.append(longest)
        return real_select_parent(rows, rng, parent)

    monkeypatch.setattr(evolve_module, "train_candidate", fake_train)
    monkeypatch.setattr(evolve_module, "select_parent", select_parent)
    monkeypatch.setattr(plots, "plot_evolve", lambda *args: None)
    config = replace(tiny_config(tiny_data), epochs=27)
    run = evolve(config, generations=36, project=str(tmp_path), seed=0, halving=True, restarts=True)
    assert run == tmp_path / "exp" and len(pools) == 35
    assert pools[0] == 3 and pools[-1] == 9 and pools == sorted(pools)


def test_halving_with_restarts_trains_each_rung_as_a_run_of_its_own(tiny_data, tmp_path):
    """A rung with restarts is a whole run of its epochs: the only candidate's first run equals a plain search of
    1 epoch, its promoted run a plain search of 3; the compute counts both runs (1 + 3 epochs)."""
    config = replace(tiny_config(tiny_data), epochs=3)  # rungs at 1 and 3
    run = evolve(config, generations=1, project=str(tmp_path / "restarts"), seed=0, halving=True, restarts=True)
    short = evolve(replace(config, epochs=1), generations=1, project=str(tmp_path / "short"), seed=0)
    full = evolve(config, generations=1, project=str(tmp_path / "full"), seed=0)
    history = read_rungs(run / "evolve_rungs.csv")
    assert [(r["epochs"], r["stopped"], r["spent"]) for r in history] == [(1, True, 1), (3, False, 3)]
    assert np.array_equal(read_ledger(run / "evolve_stopped.csv")[1][:, :-1], read_ledger(short / "evolve.csv")[1])
    assert np.array_equal(read_ledger(run / "evolve.csv")[1], read_ledger(full / "evolve.csv")[1])
    assert compute_curve(history)[0] == [1, 4] and not list((run / "candidates").iterdir())
    with pytest.raises(ConfigError, match="--restarts"):
        evolve(config, generations=1, project=str(tmp_path / "x"), restarts=True)


def test_a_candidate_whose_run_ended_before_its_row_was_written_is_not_trained_again(tiny_data, tmp_path):
    config = with_model_defaults(tiny_config(tiny_data))
    hyp = evolve_module.base_hyp(config)
    first = evolve_module.train_candidate(config, hyp, tmp_path / "candidate")
    mtime = (tmp_path / "candidate" / "results.csv").stat().st_mtime_ns
    assert evolve_module.train_candidate(config, hyp, tmp_path / "candidate") == first  # no "finished its epochs"
    assert (tmp_path / "candidate" / "results.csv").stat().st_mtime_ns == mtime


@pytest.mark.slow
@pytest.mark.parametrize("restarts", [False, True], ids=["one-run", "restarts"])
def test_a_killed_worker_leaves_its_candidate_and_the_next_one_finishes_it_exactly(tiny_data, tmp_path, restarts):
    """Killed mid-epoch (with restarts: in its second rung's run, the first finished and judged), the candidate is
    resumed by the next worker and ends exactly as a straight search, its row and rung records written once."""
    config = replace(tiny_config(tiny_data), epochs=3)
    straight = evolve(config, generations=1, project=str(tmp_path / "a"), seed=0, halving=restarts, restarts=restarts)
    run = tmp_path / "b" / "exp"
    run.mkdir(parents=True)
    (run / "opt.yaml").write_text(yaml.safe_dump(with_model_defaults(config).to_dict()))  # as evolve writes it
    flags = ["halving", "restarts"] if restarts else []
    victim = subprocess.Popen([sys.executable, "-m", "yolo_accel.evolve", str(run), "1", "0", *flags],
                              env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    snapshot = "candidates/*/epochs3/state/latest.json" if restarts else "candidates/*/state/latest.json"
    while time.time() < deadline and not list(run.glob(snapshot)):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (run / "evolve.csv").exists() and len((run / "evolve.claims").read_text().split()) == 1
    # another worker: resumes, adds no new candidate
    evolve(config, generations=1, resume=str(run), seed=5, halving=restarts, restarts=restarts)
    assert np.array_equal(read_ledger(run / "evolve.csv")[1], read_ledger(straight / "evolve.csv")[1])
    assert not (run / "evolve.claims").read_text().strip() and not list((run / "candidates").iterdir())
    assert [(r["epochs"], r["fitness"], r["spent"]) for r in read_rungs(run / "evolve_rungs.csv")] == \
        [(r["epochs"], r["fitness"], r["spent"]) for r in read_rungs(straight / "evolve_rungs.csv")]


RAY_EVOLVE = """
import logging, sys
from yolo_accel.config import TrainConfig
from yolo_accel.evolve import evolve
config = TrainConfig(data=sys.argv[1], model=sys.argv[2], epochs=3, batch_size=8, imgsz=64, workers=0,
                     noautoanchor=True)
logging.basicConfig(level=logging.INFO, format="%(message)s")
evolve(config, generations=int(sys.argv[4]), resume=sys.argv[3], seed=0, backend="ray", halving="halving" in sys.argv,
       restarts="restarts" in sys.argv)
"""


@pytest.mark.slow
def test_ray_backend_retries_a_killed_task_which_resumes_its_candidate(tiny_data, tmp_path):
    """A local Ray instance; the worker training the only candidate is SIGKILLed after the candidate's first
    snapshot: Ray runs the task again, it resumes the snapshot, and the row is written once, equal to an
    uninterrupted candidate's."""
    pytest.importorskip("ray")
    straight = evolve(replace(tiny_config(tiny_data), epochs=3), generations=1, project=str(tmp_path / "a"), seed=0)
    run = tmp_path / "b" / "exp"
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-c", RAY_EVOLVE, str(tiny_data), str(REFERENCE / "tiny.yaml"),
                               str(run), "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(run.glob("candidates/*/state/latest.json")):
        time.sleep(0.05)
    killed = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::run_candidate"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
                killed += 1
        except OSError:
            continue
    output = driver.communicate(timeout=600)[0]
    assert killed == 1 and driver.returncode == 0, output[-3000:]
    assert np.array_equal(read_ledger(run / "evolve.csv")[1], read_ledger(straight / "evolve.csv")[1])
    assert not (run / "evolve.claims").read_text().strip() and not list((run / "candidates").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("restarts", [False, True], ids=["one-run", "restarts"])
def test_ray_backend_with_halving_fills_the_same_files(tiny_data, tmp_path, restarts):
    pytest.importorskip("ray")
    run = tmp_path / "exp"
    result = subprocess.run([sys.executable, "-c", RAY_EVOLVE, str(tiny_data), str(REFERENCE / "tiny.yaml"),
                             str(run), "4", "halving", *(["restarts"] if restarts else [])],
                            env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    full, stopped = read_ledger(run / "evolve.csv")[1], read_ledger(run / "evolve_stopped.csv")[1]
    # with restarts every first-rung run is a row; 4 // 3 = 1 goes on to 3 epochs, and the best if it was another
    assert (len(stopped) == 4 and len(full) in (1, 2)) if restarts else len(full) + len(stopped) == 4
    history = read_rungs(run / "evolve_rungs.csv")
    assert {r["epochs"] for r in history} <= {1, 3} and sum(r["epochs"] == 3 for r in history) == len(full)
    assert all(r["spent"] == (r["epochs"] if restarts or r["epochs"] == 1 else 2) for r in history)
    assert (run / "hyp_evolve.yaml").is_file() and (run / "evolve.png").is_file()
    assert "candidate 4/4" in result.stdout + result.stderr
