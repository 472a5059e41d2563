"""cnnlens.viz: pixel values worked out by hand, figures that decode, arrays saved beside them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from cnnlens.viz import (
    class_method_grid,
    diverging,
    diverging_norm,
    diverging_overlay,
    feature_map_grid,
    filter_grid,
    is_signed,
    lime_regions,
    mask_below_percentile,
    method_grid,
    normalize,
    overlay,
    prediction_title,
    save_figure,
    segment_colours,
    show_image,
    symmetric_limit,
    three_panel,
    top_segments,
)
from cnnlens.viz.render import HEAT_CMAP
from cnnlens.viz import scale


def _png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.verify()  # raises on a truncated or corrupt PNG
    im = Image.open(path)
    assert im.format == "PNG"
    return im


def _ramp(c: int = 1, h: int = 6, w: int = 8) -> np.ndarray:
    return np.broadcast_to(np.linspace(0.1, 0.9, w), (c, h, w)).copy()


# ---------------------------------------------------------------- render


def test_normalize_scales_hand_values_and_clips_outliers() -> None:
    np.testing.assert_allclose(normalize(np.array([[0.0, 1.0], [2.0, 4.0]]), high=100), [[0, 0.25], [0.5, 1]])
    # one spike of 1000 among 0..99: with the 99th percentile as the top, the spike saturates at 1
    # and the ordinary values keep their spread instead of being crushed to ~0.
    x = np.append(np.arange(99.0), 1000.0).reshape(10, 10)
    n = normalize(x, high=99)
    hi = np.percentile(x, 99)
    assert n.max() == 1.0 and n.flat[-1] == 1.0
    np.testing.assert_allclose(n.flat[50], 50.0 / hi)
    assert n.flat[98] > 0.9


def test_normalize_signed_and_constant_maps() -> None:
    np.testing.assert_allclose(normalize(np.array([-2.0, 0.0, 2.0]), high=100), [0.0, 0.5, 1.0])
    assert not normalize(np.zeros((3, 3))).any()
    np.testing.assert_allclose(normalize(np.array([-1.0, 1.0, 3.0]), high=100, low=50), [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="percentiles must satisfy"):
        normalize(np.ones(3), high=0)
    with pytest.raises(ValueError, match="percentiles must satisfy"):
        normalize(np.ones(3), high=50, low=60)


def test_overlay_keeps_cold_pixels_and_tints_hot_ones_gray() -> None:
    image = _ramp(1)
    heat = np.zeros((6, 8))
    heat[2, 3] = 5.0  # the one hot pixel
    out = overlay(image, heat, alpha=0.6)
    assert out.shape == (6, 8, 3)
    cold = np.ones((6, 8), dtype=bool)
    cold[2, 3] = False
    # heat 0: the gray image, the same value on R, G and B
    np.testing.assert_allclose(out[cold], np.repeat(image[0][cold][:, None], 3, axis=1))
    # heat max (normalised to 1): (1 - alpha) * image + alpha * cmap(1)
    top = np.asarray(colormaps[HEAT_CMAP](1.0)[:3])
    np.testing.assert_allclose(out[2, 3], 0.4 * image[0, 2, 3] + 0.6 * top)
    assert np.abs(out[2, 3] - out[2, 2]).max() > 0.1


def test_overlay_rgb_half_heat_and_alpha_zero() -> None:
    image = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    heat = torch.zeros(4, 5)
    heat[0, :], heat[1, 1] = 2.0, 1.0  # a whole row at the max, so the 99.5th percentile is 2
    out = overlay(image, heat, alpha=0.5)
    base = image.numpy().transpose(1, 2, 0)
    mid = np.asarray(colormaps[HEAT_CMAP](0.5)[:3])
    np.testing.assert_allclose(out[1, 1], (1 - 0.25) * base[1, 1] + 0.25 * mid)  # h = 0.5, w = alpha*h
    np.testing.assert_allclose(out[2:], base[2:])
    np.testing.assert_allclose(overlay(image, heat, alpha=0.0), base)
    uint8 = (image * 255).round().to(torch.uint8)
    np.testing.assert_allclose(overlay(uint8, heat, alpha=0.0), uint8.numpy().transpose(1, 2, 0) / 255.0)


def test_overlay_bad_inputs() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(_ramp(), np.zeros((6, 8)), alpha=1.5)
    with pytest.raises(ValueError, match="upsample the map"):
        overlay(_ramp(), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"C = 1 \(gray\) or 3"):
        overlay(np.zeros((2, 6, 8)), np.zeros((6, 8)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        overlay(_ramp(), np.full((6, 8), np.nan))
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        overlay(_ramp(), np.zeros((2, 6, 8)))


def test_diverging_limits_are_symmetric_and_centred() -> None:
    x = np.array([[-1.0, 0.0], [0.25, 4.0]])
    norm = diverging_norm(x, 100)
    assert norm.vmin == -norm.vmax == -4.0
    assert diverging_norm(-x, 100).vmax == 4.0
    assert symmetric_limit(x, 100) == 4.0
    assert symmetric_limit(np.zeros((2, 2))) == 1.0  # never a degenerate norm
    sparse = np.zeros(1000)
    sparse[0] = -3.0
    assert symmetric_limit(sparse) == 3.0  # percentile of |x| is 0: fall back to the max
    cmap = colormaps["RdBu_r"]
    rgb = diverging(x, percentile=100)
    np.testing.assert_allclose(rgb[0, 1], cmap(0.5)[:3])  # 0 -> the white middle
    np.testing.assert_allclose(rgb[1, 1], cmap(1.0)[:3])  # +L -> darkest red
    np.testing.assert_allclose(rgb[0, 0], cmap(0.5 - 1 / 8)[:3])  # -1 on [-4, 4]
    np.testing.assert_allclose(diverging(-x, percentile=100)[1, 1], cmap(0.0)[:3])  # -L -> darkest blue


def test_diverging_overlay_hand_values() -> None:
    image = _ramp(1, 2, 3)
    x = np.array([[0.0, 2.0, -2.0], [1.0, -1.0, 0.0]])
    out = diverging_overlay(image, x, alpha=0.5, percentile=100)
    cmap = colormaps["RdBu_r"]
    gray = image[0][..., None].repeat(3, axis=2)
    np.testing.assert_allclose(out[0, 0], gray[0, 0])  # 0: the image unchanged
    np.testing.assert_allclose(out[0, 1], 0.5 * gray[0, 1] + 0.5 * np.asarray(cmap(1.0)[:3]))  # +L: half dark red
    np.testing.assert_allclose(out[0, 2], 0.5 * gray[0, 2] + 0.5 * np.asarray(cmap(0.0)[:3]))  # -L: half dark blue
    np.testing.assert_allclose(out[1, 0], 0.75 * gray[1, 0] + 0.25 * np.asarray(cmap(0.75)[:3]))  # +L/2
    with pytest.raises(ValueError, match="upsample the map"):
        diverging_overlay(image, np.zeros((3, 2)))


def test_mask_below_percentile_hand_example() -> None:
    image = np.arange(16.0).reshape(1, 4, 4) / 16.0
    saliency = np.arange(16.0)[::-1].reshape(4, 4).copy()  # the first pixels are the most salient
    masked = mask_below_percentile(image, saliency, 50.0)
    keep = saliency >= 7.5
    assert keep.sum() == 8
    np.testing.assert_allclose(masked[0][keep], image[0][keep])
    assert not masked[0][~keep].any()
    with pytest.raises(ValueError, match="percentile must be in"):
        mask_below_percentile(image, saliency, 120)


def _blocks() -> tuple[np.ndarray, np.ndarray]:
    """A 6x6 RGB image and four 3x3 segments: ids 0 1 / 2 3."""
    image = np.stack([np.full((6, 6), 0.2), np.full((6, 6), 0.4), np.full((6, 6), 0.6)])
    yy, xx = np.mgrid[:6, :6]
    return image, (yy // 3) * 2 + xx // 3


def test_top_segments() -> None:
    pos, neg = top_segments(np.array([0.5, -2.0, 3.0, 0.0, -0.1, 1.0]), 2)
    assert pos.tolist() == [2, 5] and neg.tolist() == [1, 4]
    pos, neg = top_segments(np.array([1.0, 2.0]), 3)
    assert pos.tolist() == [1, 0] and neg.tolist() == []


def test_segment_colours_tints_top_regions_and_draws_their_outline() -> None:
    image, seg = _blocks()
    weights = np.array([2.0, -1.0, 0.0, 0.5])
    out = segment_colours(image, seg, weights, top_k=1, alpha=0.5, positive=(0, 1, 0), negative=(1, 0, 0),
                          boundary=(1, 1, 0))
    base = np.array([0.2, 0.4, 0.6])
    np.testing.assert_allclose(out[1, 1], 0.5 * base + 0.5 * np.array([0, 1, 0]))  # interior of segment 0
    np.testing.assert_allclose(out[1, 4], 0.5 * base + 0.5 * np.array([1, 0, 0]))  # interior of segment 1
    np.testing.assert_allclose(out[3:, :], np.broadcast_to(base, (3, 6, 3)))  # segments 2, 3 not in top 1
    np.testing.assert_allclose(out[2, 1], [1, 1, 0])  # segment 0's edge towards segment 2
    np.testing.assert_allclose(out[0, 2], [1, 1, 0])  # ... and towards segment 1


def test_segment_colours_bad_inputs() -> None:
    image, seg = _blocks()
    with pytest.raises(ValueError, match="weights has 3 entries"):
        segment_colours(image, seg, np.ones(3))
    with pytest.raises(ValueError, match="integer map of shape"):
        segment_colours(image, seg.astype(float), np.ones(4))
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        segment_colours(image, seg, np.ones(4), top_k=0)


# ---------------------------------------------------------------- figures


def _render(fig: Figure) -> np.ndarray:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=50)
    return np.asarray(Image.open(buf).convert("RGB")).astype(int)


def test_gray_image_is_drawn_in_gray_and_rgb_in_colour() -> None:
    fig = Figure(figsize=(2, 2))
    show_image(fig.add_subplot(), _ramp(1, 16, 16))
    px = _render(fig)
    assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()  # no colour map
    assert px.min() < 60 and px.max() > 200  # the ramp spans dark to light (plus white background)
    fig = Figure(figsize=(2, 2))
    red = np.zeros((3, 16, 16))
    red[0] = 1.0
    show_image(fig.add_subplot(), red)
    px = _render(fig)
    assert ((px[..., 0] == 255) & (px[..., 1] == 0) & (px[..., 2] == 0)).sum() > 0.3 * px[..., 0].size


def test_save_figure_writes_png_and_npy(tmp_path: Path) -> None:
    sal = np.random.default_rng(0).random((8, 8))
    fig = three_panel(_ramp(1, 8, 8), sal, title="Happy 93%")
    written = save_figure(fig, tmp_path / "face.png", {"saliency": sal})
    assert written == [tmp_path / "face.png", tmp_path / "face.npy"]
    im = _png(tmp_path / "face.png")
    w_in, h_in = fig.get_size_inches()
    assert im.size == (round(w_in * 120), round(h_in * 120))
    np.testing.assert_array_equal(np.load(tmp_path / "face.npy"), sal)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.npy", "face.png"]  # no temporary left


def test_save_figure_several_arrays_npz_from_tensors(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    maps = {"saliency": torch.rand(2, 8, 8), "integrated-gradients": torch.randn(2, 8, 8)}
    fig = method_grid(images, maps)
    written = save_figure(fig, tmp_path / "sub" / "grid", {"images": images, **maps}, dpi=60)
    assert [p.name for p in written] == ["grid.png", "grid.npz"]
    _png(written[0])
    with np.load(written[1]) as z:
        assert sorted(z.files) == ["images", "integrated-gradients", "saliency"]
        np.testing.assert_array_equal(z["images"], images.numpy())
        np.testing.assert_array_equal(z["integrated-gradients"], maps["integrated-gradients"].numpy())


def test_save_figure_bad_input_and_failure_keep_old_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    with pytest.raises(ValueError, match="needs the arrays"):
        save_figure(fig, tmp_path / "a.png", {})
    with pytest.raises(TypeError, match="matplotlib.figure.Figure"):
        save_figure(np.zeros(3), tmp_path / "a.png", {"x": np.zeros(3)})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be numeric"):
        save_figure(fig, tmp_path / "a.png", {"x": np.array([object()])})
    save_figure(fig, tmp_path / "a.png", {"x": np.arange(3)})
    before = (tmp_path / "a.png").read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        Path(args[0]).write_bytes(b"\x89PNG half")  # a partial write, then the crash
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "a.png", {"x": np.arange(5)})
    assert (tmp_path / "a.png").read_bytes() == before
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.png"]


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_method_grid_layout_and_signed_columns(channels: int) -> None:
    g = torch.Generator().manual_seed(channels)
    images = torch.rand(3, channels, 10, 10, generator=g)
    maps = {"saliency": torch.rand(3, 10, 10, generator=g), "integrated-gradients": torch.randn(3, 10, 10, generator=g)}
    titles = [prediction_title(1, 2, 0.713, ["a", "b", "c"], name=f"val:{i}") for i in range(3)]
    fig = method_grid(images, maps, row_titles=titles, alpha=0.4)
    axes = fig.axes
    assert len(axes) == 3 * 3
    assert [ax.get_title() for ax in axes[:3]] == ["original", "saliency", "integrated-gradients\nred +, blue -"]
    assert axes[3].get_ylabel() == "val:1\ntrue b\npred c 71%"
    # the saliency cell is exactly the overlay, the IG cell exactly the diverging rendering
    np.testing.assert_allclose(axes[1].images[0].get_array(), overlay(images[0], maps["saliency"][0], 0.4))
    np.testing.assert_allclose(axes[5].images[0].get_array(),
                               diverging_overlay(images[1], maps["integrated-gradients"][1], 0.8))
    if channels == 1:
        assert axes[0].images[0].get_cmap().name == "gray"
    # forcing a column to be drawn as a heat map
    fig = method_grid(images, maps, signed={"integrated-gradients": False})
    assert fig.axes[2].get_title() == "integrated-gradients"


def test_method_grid_wraps_many_methods_into_bands() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 8, 8, generator=g)
    maps = {f"m{k}": torch.rand(2, 8, 8, generator=g) for k in range(7)}
    fig = method_grid(images, maps, row_titles=["a", "b"], max_cols=4)  # original + 3 methods per band: 3 bands
    axes = np.asarray(fig.axes).reshape(6, 4)
    assert [ax.get_title() for ax in axes[0]] == ["original", "m0", "m1", "m2"]
    assert [ax.get_title() for ax in axes[2]] == ["original", "m3", "m4", "m5"]
    assert [ax.get_title() for ax in axes[4]] == ["original", "m6", "", ""]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b"] * 3  # every band repeats each image's row
    np.testing.assert_allclose(axes[3, 2].images[0].get_array(), overlay(images[1], maps["m4"][1], 0.5))
    assert not axes[5, 3].axison and not axes[5, 3].images  # the last band's empty cells
    assert [p.panel for p in scale.scales_of(fig)] == [f"row {i + 1}/m{k}" for b in (0, 3, 6)
                                                 for i in range(2) for k in range(b, min(b + 3, 7))]
    # few enough methods: one band, as without max_cols
    assert len(method_grid(images, dict(list(maps.items())[:3]), max_cols=4).axes) == 2 * 4
    with pytest.raises(ValueError, match="max_cols must be a positive int"):
        method_grid(images, maps, max_cols=0)


def test_method_grid_draws_relative_maps_from_their_minimum() -> None:
    from cnnlens.viz.render import normalize

    g = torch.Generator().manual_seed(3)
    images = torch.rand(1, 1, 8, 8, generator=g)
    rise = 0.5 + 0.1 * torch.rand(1, 8, 8, generator=g)
    fig = method_grid(images, {"rise": rise, "plain": rise}, relative=["rise"])
    want = overlay(images[0], normalize(rise[0] - rise[0].min()), 0.5, scale=False)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), want, atol=1e-12)
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), overlay(images[0], rise[0], 0.5))
    assert scale.scales_of(fig)[0].vmin == pytest.approx(float(rise.min()))  # its colour scale starts there
    assert scale.scales_of(fig)[1].vmin == 0.0


def test_method_grid_without_images_and_bad_inputs() -> None:
    maps = {"grad-cam": np.random.default_rng(0).random((2, 5, 5))}
    fig = method_grid(None, maps, row_titles=["Happy", "Sad"])
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "Sad"
    with pytest.raises(ValueError, match="maps is empty"):
        method_grid(None, {})
    with pytest.raises(ValueError, match=r"maps\['b'\] has shape"):
        method_grid(None, {"a": np.zeros((2, 5, 5)), "b": np.zeros((2, 4, 5))})
    with pytest.raises(ValueError, match=r"images must have shape \[2,C,5,5\]"):
        method_grid(np.zeros((3, 1, 5, 5)), maps)
    with pytest.raises(ValueError, match="row_titles has 1 entries for 2 rows"):
        method_grid(None, maps, row_titles=["x"])
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        method_grid(None, {"a": np.zeros((5, 5))})


def test_is_signed() -> None:
    assert not is_signed(np.array([0.0, 1.0, 2.0]))
    assert not is_signed(np.array([-1e-9, 1.0]))  # rounding noise in a non-negative map
    assert is_signed(np.array([-0.5, 1.0]))
    assert not is_signed(np.zeros(4))


def test_class_method_grid_rows_are_classes() -> None:
    classes = ["Angry", "Happy", "Sad"]
    fig = class_method_grid({"saliency": np.random.default_rng(1).random((3, 6, 6))}, classes, _ramp(1, 6, 6)[None].repeat(3, 0))
    assert [fig.axes[2 * i].get_ylabel() for i in range(3)] == classes
    with pytest.raises(ValueError, match="one map per class"):
        class_method_grid({"saliency": np.zeros((2, 6, 6))}, classes)
    # a class without images has a NaN map (class_average_maps): a blank "no data" cell, not an error
    maps = np.random.default_rng(2).normal(size=(3, 6, 6))
    maps[1] = np.nan
    fig = class_method_grid({"integrated-gradients": maps}, classes)
    assert not fig.axes[1].images and fig.axes[1].texts[0].get_text() == "no data"
    assert fig.axes[0].images and fig.axes[0].get_title() == "integrated-gradients\nred +, blue -"
    maps[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        class_method_grid({"integrated-gradients": maps}, classes)


def test_three_panel_contents() -> None:
    image = _ramp(1, 8, 8)
    sal = np.arange(64.0).reshape(8, 8)
    fig = three_panel(image, sal, percentile=75)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in image_axes] == ["original", "saliency", "top 25% salient pixels"]
    np.testing.assert_allclose(image_axes[2].images[0].get_array(), mask_below_percentile(image, sal, 75)[0])
    assert len(fig.axes) == 4  # plus the colour bar
    with pytest.raises(ValueError, match="saliency has shape"):
        three_panel(image, np.zeros((4, 4)))


def test_lime_regions_panels() -> None:
    image, seg = _blocks()
    weights = np.array([2.0, -1.0, 0.0, 0.5])
    fig = lime_regions(image, seg, weights, top_k=1)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), segment_colours(image, seg, weights, 1))
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), weights[seg])
    norm = fig.axes[2].images[0].norm
    assert norm.vmin == -norm.vmax == -2.0
    cmap = fig.axes[2].images[0].get_cmap()  # the same green (for) / red (against) as the regions
    np.testing.assert_allclose(cmap(1.0)[:3], (0.0, 0.75, 0.2), atol=1e-2)
    np.testing.assert_allclose(cmap(0.0)[:3], (0.85, 0.1, 0.1), atol=1e-2)


def test_filter_grid_titles_and_errors() -> None:
    imgs = np.random.default_rng(0).normal(size=(5, 1, 6, 6)) * 3
    fig = filter_grid(imgs, "block2.conv", [3, 7, 9, 11, 12], activations=[1.5, 2, 3, 4, 5], ncols=4)
    titled = [ax.get_title() for ax in fig.axes if ax.images]
    assert titled[0] == "filter 3\nact 1.5" and len(titled) == 5
    assert "block2.conv" in fig.get_suptitle()
    shown = fig.axes[0].images[0].get_array()
    assert shown.min() == 0.0 and shown.max() == 1.0  # stretched from N(0, 9) to the visible range
    fig = filter_grid(torch.rand(2, 3, 6, 6), None, ["Happy", 4], activations=torch.tensor([2.0, 3.0]))
    assert [ax.get_title() for ax in fig.axes] == ["Happy\nact 2", "class 4\nact 3"]
    assert fig.get_suptitle().startswith("class scores")
    with pytest.raises(ValueError, match="filter_ids has 2 entries for 5 images"):
        filter_grid(imgs, "x", [1, 2])
    with pytest.raises(ValueError, match="ncols must be a positive int"):
        filter_grid(imgs, "x", [1, 2, 3, 4, 5], ncols=0)


def test_feature_map_grid_titles_scale_and_errors() -> None:
    maps = np.stack([np.full((4, 4), 0.0), np.arange(16.0).reshape(4, 4), np.full((4, 4), 5.0)])
    fig = feature_map_grid(maps, "conv1", channels=[2, 1], shared_scale=True)
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["ch 2", "ch 1"]
    assert fig.axes[0].images[0].get_clim() == (0.0, 15.0)
    assert "2 of 3 channels" in fig.get_suptitle()
    with pytest.raises(ValueError, match=r"ids in \[0, 2\]"):
        feature_map_grid(maps, "conv1", channels=[3])
    with pytest.raises(ValueError, match="index the batch first"):
        feature_map_grid(maps[None], "conv1")


# ---------------------------------------------------------------- scales (issue 11, item 7)


def test_range_text_and_constant_maps_by_hand() -> None:
    from cnnlens.viz.scale import constant_reason, is_constant, range_text, value_range

    a = np.array([[-0.0034, 0.0], [0.001, 0.0012]])
    assert value_range(a) == (-0.0034, 0.0012) and range_text(a) == "-0.0034 … 0.0012"
    assert range_text(np.array([[0.9, -0.9]])) == "-0.9 … 0.9"
    assert is_constant(np.zeros((3, 3))) and range_text(np.zeros((3, 3))) == "constant 0"
    assert is_constant(np.full((3, 3), 0.25)) and not is_constant(a)
    assert not is_constant(np.array([1e-9, 0.0]))  # tiny is not constant: its range says how tiny
    assert range_text(np.full((2, 2), np.nan)) == "no data"
    assert constant_reason("grad-cam", np.zeros((2, 2))).startswith("all zero: the class score has no gradient at the "
                                                                     "chosen layer")
    assert "after global pooling" in constant_reason("grad-cam", np.full((2, 2), 0.3))
    assert constant_reason("my-method", np.zeros((2, 2))).startswith("all zero: the method's output does not vary")


def test_method_grid_prints_each_panels_range_and_flags_a_constant_map(tmp_path: Path) -> None:
    from cnnlens.viz.scale import PNG_KEY, scales_of

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 6, 6, generator=g)
    small = torch.rand(2, 6, 6, generator=g) * 0.0034
    big = torch.rand(2, 6, 6, generator=g) * 0.9
    zero = torch.zeros(2, 6, 6)
    fig = method_grid(images, {"occlusion": small, "saliency": big, "grad-cam": zero})
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    lo, hi = float(small[0].min()), float(small[0].max())
    assert labels[0] == f"{lo:.2g} … {hi:.2g}"  # a map of changes of 0.003 says so under it
    assert labels[2] == "constant 0" and labels[5] == "constant 0"
    flagged = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert flagged == ["all zero", "all zero"]  # written across both blank Grad-CAM panels
    note = fig.get_supxlabel().replace("\n", " ")
    assert note.startswith("Each panel has its own colour scale; the numbers under a panel are its map's min … max.")
    assert "grad-cam (2 panels): all zero: the class score has no gradient" in note
    scales = scales_of(fig)
    assert len(scales) == 6 and not any(s.shared for s in scales)
    first = scales[0]
    assert (first.panel, first.low, first.high) == ("row 1/occlusion", pytest.approx(lo), pytest.approx(hi))
    assert first.vmin == 0.0 and first.vmax == pytest.approx(float(np.percentile(small[0].numpy(), 99.5)))
    assert [s.flag is not None for s in scales] == [False, False, True] * 2
    png, _ = save_figure(fig, tmp_path / "grid.png", {"images": images, "grad-cam": zero})
    import json

    saved = json.loads(Image.open(png).text[PNG_KEY])  # the ranges travel with the PNG
    assert saved[0]["panel"] == "row 1/occlusion" and saved[0]["high"] == pytest.approx(hi)
    assert saved[2]["flag"].startswith("all zero")


def test_three_panel_colour_bar_is_in_the_maps_units() -> None:
    image = _ramp(1, 8, 8)
    sal = np.arange(64.0).reshape(8, 8) * 1e-3
    fig = three_panel(image, sal)
    shown = fig.axes[1].images[0]
    assert shown.get_clim() == (0.0, pytest.approx(np.percentile(sal, 99.5)))  # values, not 0..1
    assert fig.axes[1].get_xlabel() == "0 … 0.063"
    flat = three_panel(image, np.zeros((8, 8)))
    assert flat.axes[1].texts[0].get_text() == "all zero"
    assert "saliency: all zero: the class score's gradient" in flat.get_supxlabel().replace("\n", " ")


def test_feature_map_grid_says_whether_channels_share_a_scale() -> None:
    maps = np.stack([np.zeros((4, 4)), np.arange(16.0).reshape(4, 4), np.full((4, 4), 5.0)])
    own = feature_map_grid(maps, "conv1")
    assert [ax.get_xlabel() for ax in own.axes if ax.images] == ["constant 0", "0 … 15", "constant 5"]
    assert own.get_supxlabel().startswith("Each panel has its own colour scale")
    shared = feature_map_grid(maps, "conv1", shared_scale=True)
    assert shared.get_supxlabel().startswith("All panels share one colour scale")
    assert "one scale 0 … 15" in shared.get_suptitle()
