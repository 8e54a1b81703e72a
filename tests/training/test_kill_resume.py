"""Never losing work: a tiny `octseg train` in a subprocess is killed with SIGKILL at random points
(one of them inside a checkpoint write), resumed with --resume each time, and ends with exactly the
weights of an uninterrupted run; best.ckpt and last.ckpt are readable after every kill."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import torch
from conftest import tiny_train_overrides

from octseg.checkpoint import safe_load
from octseg.config import load_config

# `octseg train` with a callback that prints each finished step (just before that step's checkpoint), and a
# checkpoint writer that, at step $HANG_AT, writes half of last.ckpt's bytes and then waits to be killed.
DRIVER = textwrap.dedent('''
    import io, os, sys, time
    from pathlib import Path
    import lightning as L
    import torch
    torch.set_num_threads(1)
    import octseg.training.run as run
    from octseg.cli import main
    from octseg.io.outputs import atomic_write

    class Steps(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            print(f"STEP {trainer.global_step}", flush=True)

    build = run.build_trainer
    run.build_trainer = lambda cfg, run_dir, callbacks=(), **kw: build(cfg, run_dir, [*callbacks, Steps()], **kw)
    hang, save = int(os.environ.get("HANG_AT", "-1")), run.atomic_torch_save

    def hanging_save(obj, path):
        if Path(path).name != "last.ckpt" or obj.get("global_step") != hang:
            return save(obj, path)
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getbuffer()

        def write(fh):
            fh.write(data[: len(data) // 2])
            fh.flush()
            print("IN_SAVE", flush=True)
            time.sleep(600)
        atomic_write(path, write)

    run.atomic_torch_save = hanging_save
    sys.exit(main(sys.argv[1:]))
''')


def _overrides(data):
    # 3 epochs of 4 steps, last.ckpt after every step; AdamW with a poly schedule (state in the checkpoint)
    return tiny_train_overrides(data, **{"method.name": "mean_teacher", "trainer.max_epochs": 3,
                                         "trainer.checkpoint_every_steps": 1, "optim.scheduler": "poly"})


def _check_readable(run):
    for name in ("best.ckpt", "last.ckpt"):
        p = run / "checkpoints" / name
        if p.exists():
            safe_load(p)  # raises CheckpointError on a truncated or half-written file


def test_sigkill_at_random_points_resumes_bit_identical(tiny_prepared, tmp_path, one_thread):
    from octseg.training.run import train

    overrides = _overrides(tiny_prepared)
    full = train(load_config(None, overrides), out_dir=tmp_path / "full")
    reference = safe_load(full.last)
    assert reference["global_step"] == 12

    recipe, driver = tmp_path / "tiny.yaml", tmp_path / "driver.py"
    recipe.write_text("name: tiny\n")
    driver.write_text(DRIVER)
    run = tmp_path / "killed"
    rng = random.Random(14)
    # kill after these steps have been announced (the process may be further on by then), and once
    # in the middle of writing last.ckpt
    plan = [("after", s) for s in sorted(rng.sample(range(1, 10), 3))]
    plan.insert(rng.randrange(0, 2), ("in_save", None))
    kills = []
    for kind, target in plan:
        last = run / "checkpoints" / "last.ckpt"
        done = safe_load(last)["global_step"] if last.exists() else 0
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   HANG_AT=str(done + 2) if kind == "in_save" else "-1")
        cmd = [sys.executable, str(driver), "train", str(recipe), *overrides, "--out", str(run)]
        proc = subprocess.Popen(cmd + (["--resume"] if last.exists() else []), env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        t0, step = time.time(), 0
        for line in proc.stdout:
            if line.startswith("STEP "):
                step = int(line.split()[1])
            if (kind == "after" and step >= max(target, done + 1)) or (kind == "in_save" and line.startswith("IN_SAVE")):
                break
            assert time.time() - t0 < 300, "the training run did not reach its kill point"
        time.sleep(rng.uniform(0, 0.3))  # a random moment after the announcement
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        kills.append((kind, step))
        _check_readable(run)
        if kind == "in_save":  # the half-written file never took last.ckpt's name
            assert safe_load(run / "checkpoints" / "last.ckpt")["global_step"] == done + 1
    assert len(kills) == 4 and any(k == "in_save" for k, _ in kills)

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(driver), "train", str(recipe), *overrides, "--out", str(run), "--resume"],
                       env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:]
    final = safe_load(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 12
    for k, v in reference["state_dict"].items():  # student and EMA teacher
        assert torch.equal(v, final["state_dict"][k]), k
    for a, b in zip(reference["optimizer_states"][0]["state"].values(), final["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert reference["lr_schedulers"] == final["lr_schedulers"]
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name not in ("best.ckpt", "last.ckpt")]


def test_mid_epoch_checkpoint_holds_position_rng_and_teacher(tiny_prepared, tmp_path, one_thread):
    """A checkpoint written inside an epoch carries the sampler position, the RNG states, the epoch's
    running loss sums and a teacher already updated for the step it was written after."""
    import lightning as L

    from octseg.training.run import train

    class Stop(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 7:  # (Lightning runs checkpoint callbacks last: step 7's is not written)
                raise RuntimeError("stop")

    overrides = tiny_train_overrides(tiny_prepared, **{"trainer.checkpoint_every_steps": 3})
    try:
        train(load_config(None, overrides), out_dir=tmp_path / "r", extra_callbacks=[Stop()])
    except RuntimeError:
        pass
    ck = safe_load(tmp_path / "r" / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == 6 and ck["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "position": 2}]
    state = ck["octseg_train_state"]
    assert state["epoch_n"] > 0 and "loss" in state["epoch_sums"] and set(state["rng"]) == {"python", "numpy",
                                                                                               "torch", "cuda"}
    assert any(k.startswith("method.teacher.") for k in ck["state_dict"])
