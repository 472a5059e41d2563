"""cnnlens.explain.registry: the one home of every fact about a method, and the places that ask it."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from cnnlens.cli import main
from cnnlens.explain import METHODS, registry
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.lime import lime, lime_explain

CAMS = ["grad-cam-pp", "xgrad-cam", "layer-cam", "hires-cam", "score-cam", "ss-cam", "is-cam", "ablation-cam",
        "eigen-cam"]
#: the gradient and reference methods after integrated gradients (none in the report's defaults)
GRADIENTS = ["input-x-gradient", "deconvnet", "deeplift", "deeplift-shap", "gradient-shap", "vargrad",
             "smoothgrad-squared", "guided-ig", "blur-ig", "lrp", "xrai"]
BUILT_IN = ["saliency", "smoothgrad", "guided-backprop", "integrated-gradients", *GRADIENTS, "grad-cam", "cam", "guided-grad-cam",
            *CAMS, "full-grad", "occlusion", "lime"]
#: the perturbation methods after LIME (none in the report's defaults)
PERTURBATIONS = ["rise", "kernel-shap", "feature-ablation", "extremal-perturbation"]
BUILT_IN += PERTURBATIONS


def toy(model: torch.nn.Module, images: torch.Tensor, target: object = None) -> torch.Tensor:
    """A toy map: the first channel."""
    return images[:, 0]


def test_built_in_methods_and_their_facts() -> None:
    assert registry.names() == BUILT_IN == list(METHODS)
    assert registry.names(kind="perturbation") == ["occlusion", "lime", *PERTURBATIONS]
    assert not any(registry.get(m).in_report is not None or registry.get(m).class_average for m in PERTURBATIONS)
    assert registry.names(kind="cam") == ["grad-cam", "cam", "guided-grad-cam", *CAMS]
    assert registry.names(streamable=True) == ["saliency", "grad-cam", "grad-cam-pp", "xgrad-cam", "layer-cam",
                                               "hires-cam", "eigen-cam"]  # the one-pass methods
    assert registry.names(layer=True) == ["grad-cam", "guided-grad-cam", *CAMS]
    assert not any(registry.get(m).in_report is not None or registry.get(m).class_average for m in CAMS)
    assert not any(registry.get(m).in_report is not None or registry.get(m).class_average for m in GRADIENTS)
    assert set(GRADIENTS) <= set(registry.names(kind="gradient"))
    g, li = registry.get("grad-cam"), registry.get("lime")
    assert (g.fn, g.label, g.kind, g.style, g.result) == (grad_cam, "Grad-CAM", "cam", "auto", None)
    assert (li.fn, li.label, li.style, li.result) == (lime, "LIME +/-", "lime", lime_explain)
    assert registry.find(grad_cam) is g and registry.find(toy) is None
    assert g.help.startswith("Grad-CAM (Selvaraju et al. 2017)") and "\n" not in g.help
    assert registry.default_options(["occlusion", "saliency", "lime"]) == {
        "occlusion": {"patch": 5, "stride": 2, "fill": "mean"}, "lime": {"n_samples": 300}}
    with pytest.raises(TypeError):
        g.options["layer"] = "conv1"  # type: ignore[index]  # facts are frozen
    with pytest.raises(TypeError):
        METHODS["toy"] = toy  # type: ignore[index]  # a view, never a table of its own


def test_report_and_faithfulness_read_the_registry() -> None:
    from cnnlens.report.context import default_average_methods, default_methods, method_label
    from cnnlens.explain.registry import style_of
    from cnnlens.report.sections.explanations import contrastive_methods

    assert default_methods() == ("saliency", "smoothgrad", "guided-backprop", "grad-cam", "guided-grad-cam",
                                 "integrated-gradients", "occlusion", "lime")
    assert default_average_methods() == ("saliency", "guided-backprop", "grad-cam")
    assert contrastive_methods() == ["grad-cam", "saliency"]
    assert [style_of(m) for m in ("lime", "saliency", "rise", "random-order")] == ["lime", "auto", "relative", "auto"]
    assert (method_label("integrated-gradients"), method_label("random-order")) == ("Integrated gradients", "random-order")


def test_bad_registrations_are_clear() -> None:
    with registry.scope():
        with pytest.raises(ValueError, match="'saliency' is already registered .* replace=True"):
            registry.method("saliency", "Mine", kind="gradient")(toy)
        with pytest.raises(ValueError, match="kind must be one of gradient, cam, perturbation, got 'pixel'"):
            registry.method("toy", "Toy", kind="pixel")(toy)
        with pytest.raises(ValueError, match="style must be one of auto, lime"):
            registry.method("toy", "Toy", kind="gradient", style="rainbow")(toy)
        for bad in ("", " toy", "a,b", "all"):
            with pytest.raises(ValueError, match="method name"):
                registry.method(bad, "Toy", kind="gradient")(toy)
        with pytest.raises(TypeError, match="fn must be callable"):
            registry.register(registry.Method("toy", "Toy", 3, "gradient"))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="no method fact 'colour'"):
            registry.names(colour="red")
        with pytest.raises(ValueError, match="unknown method 'nope'; available methods: saliency, smoothgrad"):
            registry.get("nope")
        assert registry.names() == BUILT_IN  # nothing half-registered


def test_scope_undoes_registrations_replacements_and_removals() -> None:
    with registry.scope():
        registry.method("toy", "Toy", kind="gradient")(toy)
        registry.method("saliency", "Replaced", kind="gradient", replace=True)(toy)
        registry.unregister("lime")
        assert registry.names() == [m for m in BUILT_IN if m != "lime"] + ["toy"]
        assert registry.get("saliency").label == "Replaced" and registry.names()[0] == "saliency"  # keeps its place
    with registry.scope(empty=True):
        assert registry.names() == [] and list(METHODS) == []
    assert registry.names() == BUILT_IN and registry.get("saliency").fn is not toy


def help_text(command: str) -> str:
    """``cnnlens COMMAND --help`` with every space and line break taken out (click wraps at the terminal's width)."""
    return "".join(CliRunner().invoke(main, [command, "--help"]).output.split())


def test_cli_help_lists_the_registered_methods() -> None:
    assert f"Comma-separatedmethods(saliency,smoothgrad,guided-backprop,integrated-gradients,{','.join(GRADIENTS)}," \
           "grad-cam,cam,guided-grad-" \
           f"cam,{','.join(CAMS)},full-grad,occlusion,lime,{','.join(PERTURBATIONS)})or'all'" in help_text("explain")
    assert "Layerforgrad-cam,guided-grad-cam," + ",".join(CAMS) + "(default" in help_text("explain")
    assert "[default:saliency,smoothgrad,guided-backprop,grad-cam,guided-grad-cam,integrated-gradients,occlusion,lime]" \
        in help_text("report")
    assert "[default:saliency,guided-backprop,grad-cam]" in help_text("report")
    assert "allbut" + ",".join(registry.names(kind="perturbation")) in help_text("faithfulness")
