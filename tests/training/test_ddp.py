"""Distributed training, executed: `octseg train` with trainer.devices=2 trainer.strategy=ddp on CPU
(gloo) — the ranks draw different B-scans, validation figures are summed over the ranks and equal a
single-process evaluation of the checkpoint, checkpoints are written once, --resume works."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_train_overrides

from octseg.checkpoint import safe_load
from octseg.config import load_config
from octseg.training.data import StepSampler

# `octseg train` (octseg.cli.main) with a callback that records the B-scans each rank draws.
DRIVER = textwrap.dedent('''
    import hashlib, json, os, sys
    from pathlib import Path
    import lightning as L
    import octseg.training.run as run
    from octseg.cli import main

    class Draws(L.Callback):
        def __init__(self):
            self.steps = []
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            h = [hashlib.md5(x.cpu().numpy().tobytes()).hexdigest()[:16] for x in batch["x_l"]]
            self.steps.append([trainer.global_step, h])
        def on_train_end(self, trainer, pl_module):
            out = Path(os.environ["DRAWS"].format(rank=trainer.global_rank))
            old = json.loads(out.read_text()) if out.exists() else []
            out.write_text(json.dumps(old + self.steps))

    build = run.build_trainer
    run.build_trainer = lambda cfg, run_dir, callbacks=(), **kw: build(cfg, run_dir, [*callbacks, Draws()], **kw)
    sys.exit(main(sys.argv[1:]))
''')


def test_step_sampler_gives_each_rank_its_own_batches():
    ranks = [list(StepSampler(12, 20, 2, 3, steps=3, seed=5, rank=r, world=2)) for r in (0, 1)]
    lab = [sum((l.tolist() for l, _ in r), []) for r in ranks]
    unl = [sum((u.tolist() for _, u in r), []) for r in ranks]
    assert not set(lab[0]) & set(lab[1]) and sorted(lab[0] + lab[1]) == list(range(12))
    assert not set(unl[0]) & set(unl[1]) and len(unl[0]) == len(unl[1]) == 9


def _train(tmp_path, out, *extra, resume=False):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\n")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DRAWS=str(tmp_path / f"{out.name}-{{rank}}.json"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, str(driver), "train", str(recipe), *extra, "--out", str(out)] + (["--resume"] if resume else [])
    p = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:]
    return p.stdout


def test_ddp_two_processes_on_cpu(tiny_prepared, tmp_path, one_thread):
    import hashlib

    from octseg.training.data import load_train_data
    from octseg.training.run import evaluate_networks

    base = tiny_train_overrides(tiny_prepared, **{"method.name": "mean_teacher", "trainer.accelerator": "cpu",
                                                  "trainer.devices": 2, "trainer.strategy": "ddp"})
    run = tmp_path / "run"
    log = _train(tmp_path, run, *base, "trainer.max_epochs=1")
    assert "2 processes, each its own B-scans" in log and log.count("training mean_teacher") == 1
    first = safe_load(run / "checkpoints" / "last.ckpt")
    _train(tmp_path, run, *base, "trainer.max_epochs=2", resume=True)  # as after a stop at the end of epoch 1

    # checkpoints written once, by rank 0: no second copy, no temporary file
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    last = safe_load(run / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 4 and last["global_step"] == 8  # 4 steps per epoch on each rank
    assert any(not torch.equal(first["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])

    # each rank drew, at every step of both runs, exactly the B-scans its StepSampler slice names:
    # different B-scans on the two ranks, and the resumed epoch continues the data order
    data = load_train_data(load_config(None, tiny_train_overrides(tiny_prepared)))
    lab = data.parts["labelled"]
    md5 = lambda row: hashlib.md5(data.images[row].tobytes()).hexdigest()[:16]  # noqa: E731
    draws = [json.loads((tmp_path / f"run-{r}.json").read_text()) for r in (0, 1)]
    for r in (0, 1):
        expected = []
        for epoch in (0, 1):
            sampler = StepSampler(len(lab), 0, 2, 0, steps=4, seed=0, rank=r, world=2)
            sampler.set_epoch(epoch)
            expected += [[md5(lab[i]) for i in l] for l, _ in sampler]
        assert draws[r] == [[s, h] for s, h in enumerate(expected)]
    assert all(x != y for (_, x), (_, y) in zip(*draws))

    # the logged validation figures (confusion matrices summed over both ranks' halves of the
    # validation set) equal a single-process evaluation of the same weights
    rows = [r for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("val/teacher/mean_fg_dice")]
    single = evaluate_networks(run / "checkpoints" / "last.ckpt", data, "val", device="cpu")
    for net in ("teacher", "student"):
        assert float(rows[-1][f"val/{net}/mean_fg_dice"]) == pytest.approx(
            single[net]["mean_foreground_dice"]["pooled"], abs=1e-6)
        for c, dice in single[net]["pooled"]["dice"].items():
            if c != "background" and dice is not None and rows[-1].get(f"val/{net}/dice_{c}"):
                assert float(rows[-1][f"val/{net}/dice_{c}"]) == pytest.approx(dice, abs=1e-6)
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 8
