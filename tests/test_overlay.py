"""The drawing module: one class palette, label overlays, legend bar and montage sizes."""

from __future__ import annotations

import numpy as np
import pytest

from octseg.overlay import CLASS_COLOURS, class_colours, legend_bar, montage, overlay_image, overlay_rgb

CLASSES = ("background", "IRF", "SRF", "PED")


def _scan(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w), dtype=np.uint8)
    lab = np.zeros((h, w), np.uint8)
    lab[5:15, 10:30], lab[20:25, 5:50], lab[30:38, 40:55] = 1, 2, 3
    return img, lab


@pytest.mark.parametrize("k", [2, 4, len(CLASS_COLOURS)])
def test_colours_distinct_per_class_and_background_black(k):
    c = class_colours(k)
    assert c.shape == (k, 3) and c.dtype == np.uint8
    assert (c[0] == 0).all()
    assert len({tuple(row) for row in c}) == k  # every class its own colour


def test_many_classes_cycle_without_the_background_colour():
    c = class_colours(3 * len(CLASS_COLOURS))
    assert not (c[1:] == 0).all(axis=1).any()
    assert (class_colours(4) == c[:4]).all()  # a class keeps its colour whatever K is


def test_overlay_leaves_background_unchanged_and_tints_fluid():
    img, lab = _scan()
    rgb = overlay_rgb(img, lab, len(CLASSES), alpha=0.5)
    assert rgb.shape == (*img.shape, 3) and rgb.dtype == np.uint8
    bg = lab == 0
    assert (rgb[bg] == img[bg][:, None]).all()
    colours = class_colours(len(CLASSES)).astype(np.float32)
    for c in (1, 2, 3):
        m = lab == c
        want = np.rint(img[m][:, None].astype(np.float32) * 0.5 + colours[c] * 0.5).astype(np.uint8)
        assert (rgb[m] == want).all()
    assert (overlay_rgb(img, lab, len(CLASSES), alpha=0.0) == img[..., None]).all()


def test_overlay_of_no_labels_is_the_gray_scan():
    img, _ = _scan()
    rgb = overlay_rgb(img, np.zeros_like(img), len(CLASSES))
    assert (rgb == img[..., None]).all()


def test_overlay_shape_mismatch_is_an_error():
    img, lab = _scan()
    with pytest.raises(ValueError, match="differ in shape"):
        overlay_rgb(img, lab[:-1], len(CLASSES))


def test_overlay_image_is_the_scan_over_a_legend_bar():
    img, lab = _scan()
    out = overlay_image(img, lab, CLASSES, caption="x")
    bar = legend_bar(img.shape[1], CLASSES, extra="x")
    assert out.size == (img.shape[1], img.shape[0] + bar.height)
    assert (np.asarray(out)[: img.shape[0]] == overlay_rgb(img, lab, len(CLASSES))).all()


def test_legend_bar_wraps_when_narrow():
    wide = legend_bar(800, CLASSES, extra="caption")
    narrow = legend_bar(60, CLASSES, extra="caption")
    assert wide.width == 800 and narrow.width == 60
    assert narrow.height > wide.height


@pytest.mark.parametrize("n, columns", [(1, 4), (4, 4), (5, 4), (6, 3)])
def test_montage_size(n, columns):
    tiles = [(*_scan(100, 200, seed=i), f"b{i}") for i in range(n)]
    im = montage(tiles, CLASSES, columns=columns, tile_max=100, title="vol")
    th, tw, cap_h, gap = 50, 100, 14, 4  # shrunk by 0.5 to fit tile_max; caption row; gaps
    cols = min(columns, n)
    rows = -(-n // cols)
    width = cols * tw + (cols + 1) * gap
    assert im.size == (width, rows * (th + cap_h + gap) + gap + legend_bar(width, CLASSES, extra="vol").height)


def test_montage_keeps_small_tiles_at_native_size():
    img, lab = _scan()
    im = montage([(img, lab, "a")], CLASSES, tile_max=384)
    tile = np.asarray(im)[4:4 + img.shape[0], 4:4 + img.shape[1]]
    assert (tile == overlay_rgb(img, lab, len(CLASSES))).all()


def test_montage_needs_a_tile():
    with pytest.raises(ValueError, match="at least one tile"):
        montage([], CLASSES)


def test_montage_shrinks_before_tinting_labels_by_nearest():
    """A large tile is shrunk first (gray bilinear, labels nearest), then tinted: every tile pixel carries
    exactly one class's tint, none a blend of two classes' colours."""
    from PIL import Image

    img, _ = _scan(200, 400, seed=3)
    lab = np.zeros(img.shape, np.uint8)
    lab[:, 200:] = 2                                   # left half background, right half SRF
    im = np.asarray(montage([(img, lab, "a")], CLASSES, tile_max=100))
    small = np.asarray(Image.fromarray(img).resize((100, 50), Image.BILINEAR, reducing_gap=2.0))
    small_lab = np.zeros((50, 100), np.uint8)
    small_lab[:, 50:] = 2
    assert (im[4:54, 4:104] == overlay_rgb(small, small_lab, len(CLASSES))).all()
