"""cnnlens.explain.runner: several methods in one call, options checked up front, image selection."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from conftest import make_random_model
from torch import nn

from cnnlens import explain
from cnnlens.explain import runner
from cnnlens.explain.runner import (
    by_index,
    check_methods,
    explain_images,
    misclassified,
    per_class,
    probabilities,
    run_methods,
)


def toy_sum(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None, *, scale: float = 1.0) -> torch.Tensor:
    """A deterministic 'method' whose map encodes the image and the target: easy to check by hand."""
    return images.sum(dim=1) * scale + torch.as_tensor(target, dtype=images.dtype)[:, None, None]


@dataclass
class Calls:
    sizes: list[int]
    kwargs: list[dict]


@pytest.fixture
def registry() -> Iterator[Calls]:
    """A registry holding only toy methods (the real ones are back after the test)."""
    calls = Calls([], [])

    def toy_noise(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None, *,
                  batch_size: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        calls.sizes.append(images.shape[0])
        calls.kwargs.append({"batch_size": batch_size, "generator": generator})
        return torch.rand(images.shape[0], *images.shape[2:], generator=generator)

    def toy_bad(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return images  # [N,C,H,W]: not a map

    with explain.registry.scope(empty=True):
        explain.registry.method("toy-sum", "Toy sum", kind="gradient")(toy_sum)
        explain.registry.method("toy-noise", "Toy noise", kind="perturbation")(toy_noise)
        explain.registry.method("toy-bad", "Toy bad", kind="gradient")(toy_bad)
        yield calls


def _model_and_images(n: int = 5, c: int = 1) -> tuple[nn.Module, torch.Tensor]:
    return make_random_model(c, num_classes=4, seed=3), torch.rand(n, c, 8, 8, generator=torch.Generator().manual_seed(4))


def test_maps_for_the_predicted_class_and_given_targets(registry: Calls) -> None:
    model, x = _model_and_images()
    maps = explain_images(model, x, None, ["toy-sum"], options={"toy-sum": {"scale": 2.0}})
    pred = model(x).argmax(1)
    torch.testing.assert_close(maps["toy-sum"], x.sum(1) * 2 + pred[:, None, None].float())
    maps = explain_images(model, x, [0, 1, 2, 3, 0], ["toy-sum"])
    torch.testing.assert_close(maps["toy-sum"][:, 0, 0], x[:, 0, 0, 0] + torch.tensor([0.0, 1, 2, 3, 0]))
    res = run_methods(model, x, 2, ["toy-sum"])
    assert res.targets.tolist() == [2] * 5


def test_chunks_give_the_same_maps_and_respect_batch_size(registry: Calls) -> None:
    model, x = _model_and_images(n=5)
    whole = explain_images(model, x, None, ["toy-sum"], batch_size=16)
    chunked = explain_images(model, x, None, ["toy-sum"], batch_size=2)
    torch.testing.assert_close(whole["toy-sum"], chunked["toy-sum"])
    explain_images(model, x, None, ["toy-noise"], batch_size=2)
    assert registry.sizes == [2, 2, 1]
    assert all(k["batch_size"] == 2 for k in registry.kwargs)  # passed on to methods that take it


def test_images_per_call_chunks_the_images_and_batch_size_stays_the_forward_pass(registry: Calls) -> None:
    model, x = _model_and_images()
    out = run_methods(model, x, None, ["toy-noise"], batch_size=4, images_per_call=2)
    assert registry.sizes == [2, 2, 1]
    assert all(k["batch_size"] == 4 for k in registry.kwargs)  # one meaning: the model's inputs per pass
    assert out.options["toy-noise"]["images_per_call"] == 2 and out.options["toy-noise"]["batch_size"] == 4
    with pytest.raises(ValueError, match="images_per_call must be a positive int or None"):
        run_methods(model, x, None, ["toy-noise"], images_per_call=0)


def test_generator_is_seeded_per_method(registry: Calls) -> None:
    model, x = _model_and_images(n=3)
    a = explain_images(model, x, None, ["toy-noise"], seed=7)["toy-noise"]
    b = explain_images(model, x, None, ["toy-sum", "toy-noise"], seed=7)["toy-noise"]  # other methods do not shift it
    c = explain_images(model, x, None, ["toy-noise"], seed=8)["toy-noise"]
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    torch.testing.assert_close(a, torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(7)))
    g = torch.Generator().manual_seed(1)
    d = explain_images(model, x, None, ["toy-noise"], options={"toy-noise": {"generator": g}})["toy-noise"]
    torch.testing.assert_close(d, torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)))


def test_methods_and_options_errors_before_any_work(registry: Calls) -> None:
    model, x = _model_and_images(n=2)
    with pytest.raises(ValueError, match=r"unknown method 'gradcam'; available methods: toy-sum, toy-noise, toy-bad"):
        explain_images(model, x, None, ["toy-noise", "gradcam"])
    with pytest.raises(ValueError, match="methods is empty"):
        explain_images(model, x, None, [])
    with pytest.raises(TypeError, match="list of names"):
        explain_images(model, x, None, "toy-sum")
    with pytest.raises(ValueError, match="listed twice"):
        explain_images(model, x, None, ["toy-sum", "toy-sum"])
    with pytest.raises(ValueError, match=r"method 'toy-sum' has no option 'stride'; its options: scale"):
        explain_images(model, x, None, ["toy-noise", "toy-sum"], options={"toy-sum": {"stride": 2}})
    with pytest.raises(ValueError, match="options given for unknown method 'nope'"):
        explain_images(model, x, None, ["toy-sum"], options={"nope": {}})
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        explain_images(model, x, None, ["toy-sum"], batch_size=0)
    assert registry.sizes == []  # toy-noise never ran
    # options for a known method that is not being run are ignored
    explain_images(model, x, None, ["toy-sum"], options={"toy-noise": {"batch_size": 3}})
    with pytest.raises(RuntimeError, match=r"method 'toy-bad' returned \(2, 1, 8, 8\), expected maps \[N,H,W\]"):
        explain_images(model, x, None, ["toy-bad"])
    with pytest.raises(ValueError, match="target has 3 entries"):
        explain_images(model, x, [0, 1, 2], ["toy-sum"])
    assert check_methods(None) == ["toy-sum", "toy-noise", "toy-bad"]


def test_model_mode_restored_and_progress(registry: Calls) -> None:
    from rich.console import Console
    from rich.progress import Progress

    model, x = _model_and_images(n=3)
    model.train()
    explain_images(model, x, None, ["toy-sum"], progress=True)
    assert all(m.training for m in model.modules())
    with Progress(console=Console(file=open("/dev/null", "w"))) as bar:
        explain_images(model, x, None, ["toy-sum", "toy-noise"], batch_size=2, progress=bar)
        (task,) = bar.tasks
        assert task.total == 4 and task.completed == 4
    with pytest.raises(TypeError, match="progress must be a bool"):
        explain_images(model, x, None, ["toy-sum"], progress="yes")


def test_real_methods_match_direct_calls() -> None:
    from cnnlens.explain.grad_cam import grad_cam
    from cnnlens.explain.saliency import saliency

    model, x = _model_and_images(n=5, c=3)
    maps = explain_images(model, x, None, ["saliency", "grad-cam"], options={"grad-cam": {"layer": "conv_a"}}, batch_size=2)
    torch.testing.assert_close(maps["saliency"], saliency(model, x))
    torch.testing.assert_close(maps["grad-cam"], grad_cam(model, x, layer="conv_a"))
    assert runner.method_accepts("grad-cam", "layer") and not runner.method_accepts("saliency", "layer")


def test_lime_details_kept() -> None:
    model, x = _model_and_images(n=3)
    assert runner.method_accepts("lime", "n_samples")  # read from lime_explain, behind lime(**options)
    res = run_methods(model, x, None, ["lime"], options={"lime": {"n_samples": 40}}, batch_size=2, details=True)
    starts = [s for s, _ in res.details["lime"]]
    assert starts == [0, 2]
    first = res.details["lime"][0][1]
    torch.testing.assert_close(res.maps["lime"][:2], first.map())
    with pytest.raises(ValueError, match="has no option 'n_sample'"):
        run_methods(model, x, None, ["lime"], options={"lime": {"n_sample": 40}})


# ------------------------------------------------------------------------------------- selection

PROBS = torch.tensor([
    [0.90, 0.05, 0.05],  # 0: label 0, right, 0.90
    [0.60, 0.30, 0.10],  # 1: label 0, right, 0.60
    [0.20, 0.70, 0.10],  # 2: label 0, wrong (pred 1), 0.70
    [0.10, 0.80, 0.10],  # 3: label 1, right, 0.80
    [0.05, 0.15, 0.80],  # 4: label 1, wrong (pred 2), 0.80
    [0.95, 0.03, 0.02],  # 5: label -1 (unknown): never chosen
    [0.50, 0.45, 0.05],  # 6: label 2, wrong (pred 0), 0.50
])
LABELS = torch.tensor([0, 0, 0, 1, 1, -1, 2])


def test_per_class_picks_most_confident_right_images() -> None:
    assert per_class(PROBS, LABELS, 1).tolist() == [0, 3]  # class 2 has no right image
    assert per_class(PROBS, LABELS, 2).tolist() == [0, 1, 3]


def test_misclassified_picks_most_confident_wrong_images() -> None:
    assert misclassified(PROBS, LABELS, 2).tolist() == [4, 2]
    assert misclassified(PROBS, LABELS, 10).tolist() == [4, 2, 6]
    assert misclassified(PROBS, LABELS, 1, per_class=True).tolist() == [2, 4, 6]


def test_selection_errors() -> None:
    with pytest.raises(ValueError, match="k must be a positive int"):
        per_class(PROBS, LABELS, 0)
    with pytest.raises(ValueError, match=r"probs must be \[N,K\] and labels \[N\]"):
        misclassified(PROBS, LABELS[:3], 1)
    assert by_index([3, -1, 0], 7).tolist() == [3, 6, 0]
    with pytest.raises(ValueError, match=r"image index 7 is out of range: the split has 7 images \(0..6\)"):
        by_index([0, 7], 7)
    with pytest.raises(ValueError, match="repeat"):
        by_index([1, -6], 7)
    with pytest.raises(ValueError, match="no image indices"):
        by_index([], 7)


def test_probabilities_sum_to_one_and_keep_mode() -> None:
    model, x = _model_and_images(n=4)
    model.train()
    p = probabilities(model, x, batch_size=3)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    assert all(m.training for m in model.modules())
    torch.testing.assert_close(p, model.eval()(x).softmax(1))


def test_skip_unsupported_only_for_a_first_call_refusal(registry: Calls) -> None:
    def needs_gap(model: nn.Module, images: torch.Tensor, target: object = None) -> torch.Tensor:
        raise ValueError("CAM needs a global-average-pooling head")

    calls = []

    def fails_later(model: nn.Module, images: torch.Tensor, target: object = None) -> torch.Tensor:
        calls.append(images.shape[0])
        if len(calls) > 1:
            raise ValueError("second chunk broke")
        return images[:, 0]

    explain.registry.method("needs-gap", "Needs GAP", kind="cam")(needs_gap)
    explain.registry.method("fails-later", "Fails later", kind="gradient")(fails_later)
    model, x = _model_and_images(n=3)
    res = run_methods(model, x, None, ["needs-gap", "toy-sum"], skip_unsupported=True)
    assert list(res.maps) == ["toy-sum"] and res.skipped == {"needs-gap": "CAM needs a global-average-pooling head"}
    with pytest.raises(ValueError, match="global-average-pooling"):
        run_methods(model, x, None, ["needs-gap", "toy-sum"])
    with pytest.raises(ValueError, match="second chunk broke"):  # not a refusal of the model: a real failure
        run_methods(model, x, None, ["fails-later"], batch_size=2, skip_unsupported=True)


def test_options_record_what_each_method_ran_with(registry: Calls) -> None:
    from cnnlens.explain.grad_cam import grad_cam
    from cnnlens.explain.occlusion import occlusion

    explain.registry.method("occlusion", "Occlusion", kind="perturbation")(occlusion)
    explain.registry.method("grad-cam", "Grad-CAM", kind="cam", layer=True)(grad_cam)
    model, x = _model_and_images(n=3)
    out = run_methods(model, x, None, ["toy-sum", "toy-noise", "occlusion", "grad-cam"],
                      options={"toy-sum": {"scale": 2.0}, "occlusion": {"stride": 4, "patch": 4}}, batch_size=2, seed=7)
    assert out.options["toy-sum"] == {"scale": 2.0, "images_per_call": 2}
    assert out.options["toy-noise"] == {"batch_size": 2, "generator": "torch.Generator seeded with 7", "images_per_call": 2}
    occ = out.options["occlusion"]
    assert (occ["stride"], occ["patch"], occ["fill"], occ["output"], occ["batch_size"]) == (4, 4, "black", "probability", 2)
    layer = out.options["grad-cam"]["layer"]  # None resolved to the layer Grad-CAM used
    assert isinstance(layer, str)
    torch.testing.assert_close(out.maps["grad-cam"], grad_cam(model, x, layer=layer))
    torch.testing.assert_close(out.maps["occlusion"], occlusion(model, x, **{k: occ[k] for k in ("stride", "patch", "fill")}))
    assert runner.used_options("occlusion", {})["stride"] == 1  # the function's own default, when nothing is given
    auto = run_methods(model, x, None, ["toy-noise"]).options["toy-noise"]
    assert auto["batch_size"] == "auto: the method's default on cpu"


def test_explain_and_report_read_one_set_of_defaults() -> None:
    from cnnlens.explain import registry
    from cnnlens.report.context import ReportContext, ReportOptions
    from cnnlens.viz import defaults

    o = ReportOptions()
    assert (o.occlusion_patch, o.occlusion_stride, o.occlusion_fill) == (5, 2, "mean")
    assert o.mask_percentile == defaults.MASK_PERCENTILE == 75.0
    ctx = ReportContext.__new__(ReportContext)
    ctx.options = o
    methods = ["saliency", "smoothgrad", "integrated-gradients", "occlusion", "lime"]
    assert ctx.method_options(methods) == registry.default_options(methods)
