"""2.5D input (model.context_slices): which B-scans become a B-scan's neighbour channels, the
config and checkpoint fields, and the training data that stacks them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import octseg.data.context as context
from octseg.data.context import context_rows, stack_context
from octseg.errors import CheckpointError, ConfigError


@pytest.fixture
def fresh_warning(monkeypatch):
    """The lone-B-scan warning is once per process: each test starts before it."""
    monkeypatch.setattr(context, "_warned_lone", False)


def _volume_images(volumes, slices):
    """One 2x2 B-scan per row whose pixels say which (volume, slice) it is: 10*volume + slice."""
    vid = {v: i for i, v in enumerate(dict.fromkeys(volumes))}
    return np.stack([np.full((2, 2), 10 * vid[v] + s, np.uint8) for v, s in zip(volumes, slices)])


def test_neighbours_are_ordered_by_slice_within_the_volume_and_edges_repeat(fresh_warning):
    # two volumes, rows shuffled and interleaved, slice indices with a gap (0, 1, 2, 5)
    volumes = ["A", "B", "A", "A", "B", "A", "B"]
    slices = [2, 1, 0, 5, 0, 1, 2]
    images = _volume_images(volumes, slices)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no lone B-scans here: no warning
        rows = context_rows(volumes, slices, 2)
    stacks = stack_context(images, rows)
    assert stacks.shape == (7, 5, 2, 2)
    got = {(v, s): list(stacks[i, :, 0, 0]) for i, (v, s) in enumerate(zip(volumes, slices))}
    # volume A: slices 0, 1, 2, 5 (value = slice); the neighbour of 2 after it is 5 (the gap is skipped)
    assert got[("A", 0)] == [0, 0, 0, 1, 2]
    assert got[("A", 1)] == [0, 0, 1, 2, 5]
    assert got[("A", 2)] == [0, 1, 2, 5, 5]
    assert got[("A", 5)] == [1, 2, 5, 5, 5]
    # volume B (values 10 + slice): never mixed with A
    assert got[("B", 0)] == [10, 10, 10, 11, 12]
    assert got[("B", 2)] == [10, 11, 12, 12, 12]
    # the centre channel is the B-scan itself
    assert (stacks[:, 2] == images).all()


def test_k0_is_the_2d_input_and_a_lone_bscan_repeats_itself_with_one_warning(fresh_warning):
    assert (context_rows(["a", "a", "b"], [1, 0, 0], 0) == np.arange(3)[:, None]).all()
    volumes, slices = ["v", "v", "lone"], [0, 1, 0]
    images = _volume_images(volumes, slices)
    with pytest.warns(UserWarning, match="no volume"):
        rows = context_rows(volumes, slices, 1)
    assert list(stack_context(images, rows)[2, :, 0, 0]) == [10, 10, 10]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, not once per call
        context_rows(["x"], [0], 1)


def test_one_volume_in_the_given_order_when_no_ids():
    rows = context_rows(None, None, 1, n=3)
    assert rows.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2]]


@pytest.mark.parametrize("value", ["-1", "1.5", "true", "9", "two"])
def test_config_rejects_anything_but_a_small_non_negative_integer(value):
    from octseg.config import load_config

    with pytest.raises(ConfigError, match="model.context_slices"):
        load_config("demo_cpu", [f"model.context_slices={value}"])
    assert load_config("demo_cpu", ["model.context_slices=2"]).model.context_slices == 2
    assert load_config("demo_cpu", []).model.context_slices == 0


def test_checkpoint_meta_records_context_slices_and_old_checkpoints_mean_zero(tmp_path):
    from conftest import TINY_MODEL

    from octseg.checkpoint import checkpoint_meta, context_slices, load_network, save_inference_checkpoint
    from octseg.models import ModelConfig, build_model

    model = {**TINY_MODEL, "context_slices": 1}
    net = build_model(ModelConfig(**model), 4)
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 3  # 2k+1 channels
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)
    meta = checkpoint_meta(model, ["bg", "a", "b", "c"], (32, 32), {"mean": 0.2, "std": 0.1}, "supervised",
                           ["student"], "student")
    assert meta["context_slices"] == 1
    path = save_inference_checkpoint(tmp_path / "k1.ckpt", {"student": net}, meta)
    loaded, m = load_network(path)
    assert context_slices(m) == 1 and loaded(torch.zeros(1, 3, 32, 32)).shape[1] == 4
    # a checkpoint from before 2.5D input: neither field -> 0
    old = dict(meta)
    old.pop("context_slices")
    old["model"] = dict(TINY_MODEL, encoder_weights="none")
    net0 = build_model(ModelConfig(**TINY_MODEL), 4)
    _, m0 = load_network(save_inference_checkpoint(tmp_path / "old.ckpt", {"student": net0}, old))
    assert m0["context_slices"] == 0
    bad = dict(meta, context_slices=-2)
    with pytest.raises(CheckpointError, match="context_slices"):
        load_network(save_inference_checkpoint(tmp_path / "bad.ckpt", {"student": net}, bad))


def test_training_data_stacks_neighbours_from_the_whole_dataset(tiny_prepared):
    from conftest import tiny_train_overrides

    from octseg.config import load_config
    from octseg.training.data import EvalDataset, StepDataset, load_train_data

    plain = load_train_data(load_config("demo_cpu", tiny_train_overrides(tiny_prepared)))
    data = load_train_data(load_config("demo_cpu", tiny_train_overrides(tiny_prepared, **{"model.context_slices": 1})))
    assert plain.context is None and data.context.shape == (len(data.images), 3)
    batch = StepDataset(data)[(np.array([0, 1]), np.array([0]))]
    assert batch["x_l"].shape == (2, 3, 64, 64) and batch["x_u"].shape == (1, 3, 64, 64)
    plain_batch = StepDataset(plain)[(np.array([0, 1]), np.array([0]))]
    assert plain_batch["x_l"].shape == (2, 64, 64)
    assert torch.equal(batch["x_l"][:, 1], plain_batch["x_l"])  # centre = the 2-D input
    assert torch.equal(batch["y_l"], plain_batch["y_l"])  # the centre B-scan's labels
    # a B-scan's neighbours are its volume's slices +-1, by slice index
    r = int(data.parts["labelled"][0])
    same = [i for i, v in enumerate(data.volumes) if v == data.volumes[r]]
    by_slice = sorted(same, key=lambda i: data.slice_indices[i])
    p = by_slice.index(r)
    want = [by_slice[max(p - 1, 0)], r, by_slice[min(p + 1, len(by_slice) - 1)]]
    assert np.array_equal(batch["x_l"][0].numpy(), np.asarray(data.images[want]))
    assert EvalDataset(data, "val", 2)[0]["x"].shape[1] == 3
