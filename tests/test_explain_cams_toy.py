"""The CAM family by value: a toy model with hand-set weights whose maps are worked out by hand, the closed-form
identities between the methods, and the properties every method keeps (per-image targets, batch-size
independence, seeds, clear errors).

The toy: one 2x2 gray image ``x = [[1,2],[3,4]]``; the layer ``features`` (a 1x1 convolution) outputs
``A_0 = x`` and ``A_1 = 5 - x = [[4,3],[2,1]]``; the head is a linear layer over the four positions of both
channels, class 0 reading ``V_0 = [[1,0],[0,-1]]`` from ``A_0`` and ``V_1 = [[0,1],[1,1]]`` from ``A_1``, bias 1:
``logit_0 = (1 - 4) + (3 + 2 + 1) + 1 = 4``, and the gradient of ``logit_0`` with respect to ``A_k`` is ``V_k``.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import make_random_model
from torch import nn

from cnnlens.explain.ablation_cam import ablation_cam
from cnnlens.explain.eigen_cam import eigen_cam
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.grad_cam_pp import grad_cam_pp
from cnnlens.explain.hires_cam import hires_cam
from cnnlens.explain.is_cam import is_cam
from cnnlens.explain.layer_cam import layer_cam
from cnnlens.explain.score_cam import score_cam
from cnnlens.explain.ss_cam import ss_cam
from cnnlens.explain.xgrad_cam import xgrad_cam


# the toy's pixels are the integers 1..4, for arithmetic by hand: not the [0,1] images cnnlens warns about
pytestmark = pytest.mark.filterwarnings("ignore:images range from 1 to 4")


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features.bias.copy_(torch.tensor([0.0, 5.0]))
            self.head.weight.zero_()
            self.head.weight[0] = torch.tensor([1.0, 0, 0, -1, 0, 1, 1, 1])  # V_0 then V_1, row-major
            self.head.weight[1, 3] = 1.0  # class 1: logit = A_0[1,1] = 4
            self.head.bias.copy_(torch.tensor([1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


X = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).double()
A0 = X[0, 0]
A1 = 5 - A0


def toy_map(fn, **kw) -> torch.Tensor:
    return fn(Toy().double(), X, 0, layer="features", upsample=False, fast=False, **kw)[0]


def test_hires_cam_layer_cam_grad_cam_xgrad_cam_by_hand():
    # HiResCAM: V_0 * A_0 + V_1 * A_1 = [[1+0, 0+3], [0+2, -4+1]] -> ReLU
    torch.testing.assert_close(toy_map(hires_cam), torch.tensor([[1.0, 3], [2, 0]]).double())
    torch.testing.assert_close(toy_map(hires_cam, relu=False), torch.tensor([[1.0, 3], [2, -3]]).double())
    # Layer-CAM: ReLU(V_0) * A_0 + ReLU(V_1) * A_1: the -1 gradient at (1,1) no longer cancels
    torch.testing.assert_close(toy_map(layer_cam), torch.tensor([[1.0, 3], [2, 1]]).double())
    # Grad-CAM: mean(V_0) = 0, mean(V_1) = 0.75
    torch.testing.assert_close(toy_map(grad_cam), 0.75 * A1)
    # XGrad-CAM: w_0 = sum(A_0 V_0) / sum(A_0) = -3/10, w_1 = sum(A_1 V_1) / sum(A_1) = 6/10
    torch.testing.assert_close(toy_map(xgrad_cam, relu=False), -0.3 * A0 + 0.6 * A1)
    torch.testing.assert_close(toy_map(xgrad_cam), torch.tensor([[2.1, 1.2], [0.3, 0]]).double())


def test_grad_cam_pp_by_hand():
    # alpha = g^2 / (2 g^2 + sum(A_k) g^3) with sum(A_0) = sum(A_1) = 10: 1/12 where g = 1, ReLU(g) = 0 where
    # g = -1, 0 where g = 0; so w_0 = 1/12 (one position), w_1 = 3/12
    torch.testing.assert_close(toy_map(grad_cam_pp), A0 / 12 + A1 / 4)


def test_ablation_cam_by_hand():
    # zeroing A_0: logit 0 + 6 + 1 = 7, w_0 = (4 - 7) / 4; zeroing A_1: -3 + 0 + 1 = -2, w_1 = (4 + 2) / 4
    torch.testing.assert_close(toy_map(ablation_cam, relu=False), -0.75 * A0 + 1.5 * A1)
    torch.testing.assert_close(toy_map(ablation_cam), torch.tensor([[5.25, 3.0], [0.75, 0.0]]).double())


def test_score_cam_and_is_cam_by_hand():
    m0, m1 = (A0 - 1) / 3, (A1 - 1) / 3  # each map scaled to [0,1] (the layer has the input's resolution)

    def logit(masked: torch.Tensor) -> float:  # the toy's class-0 logit, written out
        a0, a1 = masked, 5 - masked
        return float(a0[0, 0] - a0[1, 1] + a1[0, 1] + a1[1, 0] + a1[1, 1] + 1)

    s = torch.tensor([logit(A0 * m0), logit(A0 * m1)]).double()
    assert torch.allclose(s, torch.tensor([16 / 3, 44 / 3]).double())  # x*m0 = [[0,2/3],[2,4]], x*m1 = [[1,4/3],[1,0]]
    w = s.softmax(0)
    torch.testing.assert_close(toy_map(score_cam), (w[0] * A0 + w[1] * A1).clamp(min=0))
    # IS-CAM, 3 steps: masks scaled by c_i = i(i+1)/6 = 1/3, 1, 2, scores averaged
    c = [1 / 3, 1.0, 2.0]
    s = torch.tensor([[logit(A0 * ci * m) for ci in c] for m in (m0, m1)]).double().mean(1)
    w = s.softmax(0)
    torch.testing.assert_close(toy_map(is_cam, n_samples=3), (w[0] * A0 + w[1] * A1).clamp(min=0))


def test_ss_cam_without_noise_is_score_cam_and_its_noise_is_its_generators():
    torch.testing.assert_close(toy_map(ss_cam, n_samples=2, std=0.0), toy_map(score_cam))
    # one draw of noise of std 0.1 on each mask, seed 0: the same draw by hand
    g = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn((1, 2, 2, 2), generator=g).double()
    m = torch.stack([(A0 - 1) / 3, (A1 - 1) / 3]) + noise[0]
    logits = Toy().double()(X * m[:, None])[:, 0]
    w = logits.softmax(0)
    expected = (w[0] * A0 + w[1] * A1).clamp(min=0)
    torch.testing.assert_close(toy_map(ss_cam, n_samples=1, std=0.1, generator=torch.Generator().manual_seed(0)),
                               expected)


class RankOne(nn.Module):
    """``A_k = v_k x`` with ``v = (1, 2)``: the activations are rank one, their first principal direction ``v``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1, bias=False)
        self.head = nn.Linear(2, 3)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_eigen_cam_of_rank_one_activations_is_the_image_times_the_norm_of_v():
    x = torch.rand(3, 1, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = RankOne().double()
    maps = eigen_cam(model, x, layer="features", upsample=False, fast=False)
    torch.testing.assert_close(maps, math.sqrt(5) * x[:, 0])
    centred = eigen_cam(model, x, layer="features", upsample=False, relu=False, center=True, fast=False)
    expected = math.sqrt(5) * (x[:, 0] - x[:, 0].mean(dim=(1, 2), keepdim=True))
    strongest = expected.flatten(1).gather(1, expected.flatten(1).abs().argmax(1, keepdim=True))
    torch.testing.assert_close(centred, expected * strongest.sign()[:, :, None])  # its largest magnitude positive
    assert torch.equal(eigen_cam(model, x, 2, layer="features", fast=False), eigen_cam(model, x, 0, layer="features",
                                                                                    fast=False))  # class-agnostic


def test_eigen_cam_is_the_first_principal_projection_on_a_random_model(random_model_and_images):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    maps = eigen_cam(model, images, layer="conv_b", upsample=False, relu=False, fast=False)
    from cnnlens.explain.feature_maps import feature_maps

    acts = feature_maps(model, images, ["conv_b"])["conv_b"]
    for i in range(len(images)):
        rows = acts[i].flatten(1).T  # [h*w, K]
        # the projection on the top eigenvector of rows^T rows maximises the projected energy, which is sigma_1^2
        eigvals, eigvecs = torch.linalg.eigh(rows.T @ rows)
        proj = rows @ eigvecs[:, -1]
        proj = proj * proj[proj.abs().argmax()].sign()
        torch.testing.assert_close(maps[i].flatten(), proj)
        assert math.isclose(float(maps[i].square().sum()), float(eigvals[-1]), rel_tol=1e-9)


def test_on_a_layer_feeding_gap_and_linear_hires_cam_and_xgrad_cam_are_grad_cam(random_model_and_images):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    reference = grad_cam(model, images, [0, 1, 2, 3], layer="head", upsample=False, relu=False, fast=False)
    for fn in (hires_cam, xgrad_cam):
        torch.testing.assert_close(fn(model, images, [0, 1, 2, 3], layer="head", upsample=False, relu=False,
                                      fast=False), reference)


def test_grad_cam_pp_closed_form_on_a_gap_linear_head(random_model_and_images):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    from cnnlens.explain.feature_maps import feature_maps

    acts = feature_maps(model, images, ["head"])["head"]
    hw = acts.shape[2] * acts.shape[3]
    t = torch.tensor([0, 1, 2, 3])
    g = model.fc.weight[t].detach() / hw  # the gradient, constant over positions
    s = acts.sum(dim=(2, 3))
    weights = torch.where(g > 0, hw * g / (2 + s * g), 0)  # hw positions of alpha = 1 / (2 + S g), times ReLU(g)
    expected = (weights[:, :, None, None] * acts).sum(1).clamp(min=0)
    torch.testing.assert_close(grad_cam_pp(model, images, t, layer="head", upsample=False, fast=False), expected)


def test_layer_cam_is_hires_cam_where_every_gradient_is_positive():
    model = Toy().double()
    with torch.no_grad():
        model.head.weight[0] = torch.tensor([1.0, 2, 0.5, 1, 3, 1, 1, 0.25])
    kw = dict(layer="features", upsample=False, relu=False, fast=False)
    torch.testing.assert_close(layer_cam(model, X, 0, **kw), hires_cam(model, X, 0, **kw))


ALL = {
    "grad-cam-pp": grad_cam_pp, "xgrad-cam": xgrad_cam, "layer-cam": layer_cam, "hires-cam": hires_cam,
    "eigen-cam": eigen_cam,
    "score-cam": functools.partial(score_cam, batch_size=5),
    "ss-cam": functools.partial(ss_cam, n_samples=3, batch_size=7),
    "is-cam": functools.partial(is_cam, n_samples=3, batch_size=7),
    "ablation-cam": functools.partial(ablation_cam, batch_size=6),
}
SEEDED = {"ss-cam"}


def _run(name: str, model: nn.Module, images: torch.Tensor, target, **kw) -> torch.Tensor:
    if name in SEEDED:
        kw["generator"] = torch.Generator().manual_seed(1)
    return ALL[name](model, images, target, **kw)


@pytest.mark.parametrize("name", list(ALL))
def test_per_image_targets_and_batches_give_each_image_its_own_map(random_model_and_images, name):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    targets = [0, 5, 2, 6]
    together = _run(name, model, images, targets, fast=False)
    assert together.shape == (4, 16, 16) and together.abs().max() > 0
    if name in SEEDED:  # its noise is drawn for the whole batch: compare with the batch, other batch sizes
        other = ALL[name](model, images, targets, fast=False, generator=torch.Generator().manual_seed(1),
                          batch_size=3)
        torch.testing.assert_close(other, together, rtol=1e-10, atol=1e-12)
        return
    for i in range(4):
        alone = _run(name, model, images[i : i + 1], targets[i], fast=False)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["score-cam", "ss-cam", "is-cam", "ablation-cam"])
def test_perturbation_cams_do_not_depend_on_batch_size_and_default_to_the_predicted_class(
        random_model_and_images, name):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    fn = ALL[name].func
    kw = {"n_samples": 2, "generator": torch.Generator().manual_seed(2)} if name == "ss-cam" else {}
    one = fn(model, images, None, batch_size=1, fast=False, **kw)
    if name == "ss-cam":
        kw["generator"] = torch.Generator().manual_seed(2)
    predicted = model(images).argmax(1)
    many = fn(model, images, predicted, batch_size=64, fast=False, **kw)
    torch.testing.assert_close(one, many, rtol=1e-10, atol=1e-12)


def test_ss_cam_same_seed_same_map_other_seed_other_map_no_global_draws(random_model_and_images):
    model, images = random_model_and_images
    state = torch.get_rng_state()
    a = ss_cam(model, images, 1, n_samples=2, generator=torch.Generator().manual_seed(7))
    b = ss_cam(model, images, 1, n_samples=2, generator=torch.Generator().manual_seed(7))
    c = ss_cam(model, images, 1, n_samples=2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


# (the gradient CAMs and Eigen-CAM: tests/test_fast_ties.py, in float64 and tie-aware in float32)
@pytest.mark.parametrize("name", ["score-cam", "ss-cam", "is-cam", "ablation-cam"])
def test_fast_path_equals_the_model_itself_in_float64(random_model_and_images, name):
    model, images = random_model_and_images
    model, images = model.double(), images.double()
    exact = _run(name, model, images, [0, 3, 6, 2], fast=False, upsample=False, relu=False)
    fast = _run(name, model, images, [0, 3, 6, 2], fast=True, upsample=False, relu=False)
    assert exact.abs().max() > 0
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-10 * float(exact.abs().max()))


def test_bad_arguments_are_clear(random_model_and_images):
    model, images = random_model_and_images
    with pytest.raises(ValueError, match="n_samples must be an int >= 1, got 0"):
        ss_cam(model, images, n_samples=0)
    with pytest.raises(ValueError, match="n_samples must be an int >= 1, got 2.5"):
        is_cam(model, images, n_samples=2.5)
    with pytest.raises(ValueError, match=r"std must be a number >= 0 .*got -1"):
        ss_cam(model, images, std=-1)
    for fn in (score_cam, ablation_cam):
        with pytest.raises(ValueError, match="batch_size must be a positive int or None, got 0"):
            fn(model, images, batch_size=0)
    for fn in ALL.values():
        with pytest.raises(ValueError, match="unknown layer 'nope'; valid layer names: stem, stem.0"):
            fn(model, images, layer="nope")
        with pytest.raises(ValueError, match=r"layer 'fc' outputs \(4, 7\); .* feature map \[N,C,h,w\]"):
            fn(model, images, layer="fc")
        with pytest.raises(ValueError, match="target has 2 entries but images has N=4"):
            fn(model, images, [1, 2])


def test_score_cams_fast_path_scores_through_the_models_local_plan(random_model_and_images):
    from cnnlens.explain import accel, core

    model, images = random_model_and_images
    model, images = model.double(), images.double()
    with core.guarded(model, images):
        found = accel.plan_scorer(model, images, batch_size=3)
        assert found is not None and found[1] == 3  # the residual net decomposes into local layers + GAP
        torch.testing.assert_close(found[0](images), model(images), rtol=0, atol=1e-10)
