"""LIME's pattern-memoised forward passes: the same logits as the model on every masked image, through
tables (every layer type, a flatten + Linear head included), dense passes and the switch between them;
a fallback says why in the log."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from cnnlens.explain import accel, segmentation
from cnnlens.explain.accel import tables, winograd
from cnnlens.explain.accel.incremental import FlattenLinear, Pointwise, local_plan
from cnnlens.explain.accel.tables import masked_logits
from cnnlens.explain.lime import hide_values, lime_explain, relabel
from conftest import make_random_model
from test_fast import random_bn
from test_fast_incremental import FlatHead, InPlaceResidual, OddNet, _flat_layer_norm, small
from zoo_models import build_sequential, build_view_tanh


def blocks(h: int, w: int, size: int) -> torch.Tensor:
    """Square superpixels of ``size`` pixels, ids 0..K-1."""
    return relabel((torch.arange(h)[:, None] // size * (w // size + 1) + torch.arange(w)[None, :] // size)[None])[0][0]


MODELS = {
    "small_cnn": lambda c: small("small_cnn", c, seed=1),
    "vgg_fer": lambda c: small("vgg_fer", c, seed=2),
    "residual": lambda c: make_random_model(c, seed=3),
    "inplace_residual": lambda c: random_bn(InPlaceResidual(c), seed=4),
    "odd_layers": lambda c: random_bn(OddNet(c), seed=5),  # ceil-mode and padded pooling, dilation, Tanh
    "flatten_linear": lambda c: random_bn(FlatHead("view_size", c), seed=6),  # functional pools, view, 2 Linear
    "flatten_module": lambda c: random_bn(FlatHead("int_size", c), seed=7),  # traced with the example's shapes
}


@pytest.mark.parametrize("mode", ["tables", "dense", "winograd", "default"])
@pytest.mark.parametrize("name", list(MODELS))
def test_logits_equal_the_model_on_every_masked_image(name, mode, monkeypatch):
    winograd_calls = []
    if mode == "winograd":  # dense, every eligible 3x3 convolution as Winograd F(4x4,3x3)
        call = winograd.WinogradConv.__call__
        monkeypatch.setattr(winograd.WinogradConv, "__call__", lambda self, x: winograd_calls.append(1) or call(self, x))
    if mode == "tables":  # every layer that can be a table is one
        monkeypatch.setattr(tables, "MAX_SHARE", 1.0)
        monkeypatch.setattr(tables, "_table_cost", lambda *a: 0)
        monkeypatch.setattr(tables, "_linear_table_cost", lambda *a: 0)
    elif mode in ("dense", "winograd"):
        monkeypatch.setattr(tables, "MAX_SHARE", 0.0)
        monkeypatch.setattr(tables, "_table_cost", lambda *a: float("inf"))
    model = copy.deepcopy(MODELS[name](3)).double().eval()
    h, w = 15, 13
    image = torch.rand(3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    segments = blocks(h, w, 4)
    k = int(segments.max()) + 1
    masks = torch.rand(37, k, generator=torch.Generator().manual_seed(1)) < 0.5
    fill = hide_values(image[None], segments[None], k, "mean")[0]
    plan = local_plan(model, image[None])
    products = []  # a flatten + Linear head computed from the last table
    linear_products = tables._linear_products
    monkeypatch.setattr(tables, "_linear_products", lambda *a: products.append(1) or linear_products(*a))
    made: list[bool] = []  # per spatial or merge step: did it become a table?
    original = tables._step_table

    def record(step, *rest):
        table = original(step, *rest)
        if not isinstance(step.layer, Pointwise):
            made.append(table is not None)
        return table

    monkeypatch.setattr(tables, "_step_table", record)
    with torch.inference_mode():
        got = masked_logits(plan, image, fill, segments, masks, batch_size=5,
                            winograd={"winograd": "always", "default": "auto"}.get(mode, "never"))
        shown = masks[:, segments.reshape(-1)].reshape(-1, 1, h, w)
        ref = model(torch.where(shown, image, fill))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    if mode == "tables":
        assert sum(made) >= 2  # the comparison really went through tables of spatial layers
        assert bool(products) == isinstance(plan.head, FlattenLinear)  # and through the head's first Linear
    elif mode in ("dense", "winograd"):
        assert made == [False]  # the first spatial layer already went dense: nothing after it was tried
    if mode != "default":
        assert bool(winograd_calls) == (mode == "winograd")  # every model here has 3x3 stride-1 convolutions


def test_patterns_repeat_on_the_first_layers_and_the_switch_is_dense():
    # 16 superpixels of 4x4 on a 16x16 image: a 3x3 convolution's field touches at most 4 of them, so
    # its map holds at most 16 distinct patterns per position however many samples there are.
    model = random_bn(small("small_cnn", 1, seed=3))
    plan = local_plan(model.eval(), torch.rand(1, 1, 16, 16))
    segments = blocks(16, 16, 4)
    masks = torch.rand(500, 16, generator=torch.Generator().manual_seed(2)) < 0.5
    keys = tables._Keys(segments, masks)
    field = (torch.arange(16).sub(1).clamp(0, 15), torch.arange(16).add(1).clamp(0, 15))
    pattern, bits = keys(field, field)
    assert int(bits.max()) <= 4 and int(bits.min()) == 1
    per_position = [len(torch.unique(pattern[:, p])) for p in range(256)]
    assert max(per_position) <= 16 and min(per_position) == 2  # interior pixels: their superpixel on or off
    image = torch.rand(1, 16, 16)
    with torch.inference_mode():
        got = masked_logits(plan, image, torch.zeros_like(image), segments, masks, batch_size=64)
        ref = model(torch.where(masks[:, segments.reshape(-1)].reshape(-1, 1, 16, 16), image, 0.0))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_lime_default_matches_scoring_every_masked_image_and_bf16_is_close():
    model = small("vgg_fer", 1, seed=7)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    segments = blocks(16, 16, 3).expand(2, 16, 16)

    def run(**kw: object) -> object:
        return lime_explain(model, x, None, segmentation=segments, n_samples=200,
                            generator=torch.Generator().manual_seed(0), **kw)

    exact, fast, low = run(fast=False), run(), run(precision="bfloat16")
    torch.testing.assert_close(fast.sample_scores, exact.sample_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.weights, exact.weights, rtol=1e-4, atol=1e-5)
    assert not torch.equal(low.sample_scores, fast.sample_scores)  # it really ran in bfloat16
    assert (low.sample_scores - fast.sample_scores).abs().max() < 0.05


@pytest.mark.parametrize("bits", [3, 30], ids=["slots", "sorted"])
def test_rows_number_each_distinct_position_and_pattern_once(bits):
    pattern = torch.randint(0, 5, (40, 9), generator=torch.Generator().manual_seed(bits))
    position, index, example = tables._rows(pattern, torch.full((9,), bits))
    pairs = {(p, int(pattern[s, p])) for s in range(40) for p in range(9)}
    assert len(position) == len(pairs) and int(index.max()) == len(pairs) - 1
    for s in range(40):
        for p in range(9):
            row = int(index[s, p])
            assert int(position[row]) == p
            assert int(pattern[int(example[row]), p]) == int(pattern[s, p])  # its example shows the same pattern
    same = (index[:, None, :] == index[None, :, :])  # same row <=> same pattern at that position
    assert torch.equal(same, pattern[:, None, :] == pattern[None, :, :])


@pytest.mark.parametrize("channels", [1, 3])
def test_bfloat16_tables_run_through_every_path(channels, monkeypatch):
    monkeypatch.setattr(tables, "MAX_SHARE", 1.0)  # tables as deep as they go: both convolution paths
    monkeypatch.setattr(tables, "_table_cost", lambda *a: 0)
    model = small("vgg_fer", channels, seed=4)
    image = torch.rand(channels, 16, 16, generator=torch.Generator().manual_seed(4))
    segments = blocks(16, 16, 4)
    masks = torch.rand(64, int(segments.max()) + 1, generator=torch.Generator().manual_seed(5)) < 0.5
    fill = torch.zeros_like(image)
    plan = local_plan(model.eval(), image[None])
    with torch.inference_mode():
        ref = masked_logits(plan, image, fill, segments, masks)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = masked_logits(plan, image, fill, segments, masks)
    assert low.dtype == torch.bfloat16 and (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_a_convolution_is_a_table_only_where_that_is_cheaper():
    conv = nn.Conv2d(64, 128, 3)
    dense = tables._dense_cost(conv, 1000 * 24 * 24)
    # few input rows: each times each tap once, then sums of 9 gathered products per output row
    assert tables._table_cost(conv, 20_000, 84_000) < dense / 2
    # as many distinct rows as (sample, position) pairs: a table only adds gathers
    assert tables._table_cost(conv, 600_000, 576_000) > dense


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["view_tanh", "sequential"])
def test_lime_on_flatten_models_uses_the_tables_and_matches_every_masked_image(name, dtype, monkeypatch, caplog):
    # the fast path (tables, dense, Winograd where timed faster) gives the plain path's scores: to 1e-10 in
    # float64, to float32 rounding in float32
    model, side = (build_view_tanh(), 48) if name == "view_tanh" else (build_sequential(size=24), 24)
    model = model.to(dtype)
    x = torch.rand(2, 1, side, side, dtype=dtype, generator=torch.Generator().manual_seed(4))
    segments = blocks(side, side, 6).expand(2, side, side)
    calls = []
    original = tables.masked_logits
    monkeypatch.setattr(tables, "masked_logits", lambda *a, **k: calls.append(1) or original(*a, **k))
    # the tables, not the timed choice of the plan forward for few samples (its own test: test_explain_perturb_superpixels)
    monkeypatch.setattr(segmentation, "_dense_is_faster", lambda images, first_image, *rest: first_image() or False)
    monkeypatch.setattr(accel.tuning, "CHOICES", {})  # none kept from other tests

    def run(**kw: object) -> object:
        return lime_explain(model, x, None, segmentation=segments, n_samples=150,
                            generator=torch.Generator().manual_seed(0), **kw)

    with caplog.at_level(logging.WARNING, logger="cnnlens.explain"):
        fast = run()
    exact = run(fast=False)
    assert len(calls) == 2 and not [r for r in caplog.records if "do not apply" in r.getMessage()]
    rtol, atol = (0, 1e-10) if dtype == torch.float64 else (1e-5, 1e-6)
    torch.testing.assert_close(fast.sample_scores, exact.sample_scores, rtol=rtol, atol=atol)
    torch.testing.assert_close(fast.weights, exact.weights, rtol=rtol, atol=10 * atol)


def test_lime_fallback_is_one_log_line_naming_the_layer(caplog):
    model = _flat_layer_norm()
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    segments = blocks(16, 16, 4)[None]
    with caplog.at_level(logging.WARNING, logger="cnnlens.explain"):
        fast = lime_explain(model, x, 0, segmentation=segments, n_samples=40, generator=torch.Generator().manual_seed(1))
    [line] = [r.getMessage() for r in caplog.records if "pattern tables do not apply" in r.getMessage()]
    assert "Sequential: layer 3 (LayerNorm) reads the flattened map" in line and "scoring every masked image" in line
    exact = lime_explain(model, x, 0, segmentation=segments, n_samples=40, generator=torch.Generator().manual_seed(1),
                         fast=False)
    torch.testing.assert_close(fast.sample_scores, exact.sample_scores, rtol=1e-5, atol=1e-6)
