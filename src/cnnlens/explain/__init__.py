"""Explanation methods. Every method: ``method(model, images[N,C,H,W], target=None, **options) -> Tensor``.

Each method file registers its function with :func:`cnnlens.explain.registry.method`, the one home of
every fact about a method (CLI name, label, kind, options, ...); importing this package imports the
method modules, in the order the CLI lists them. ``METHODS`` is the registry's read-only view, name ->
the function returning a per-pixel map ``[N,H,W]``; richer results (LIME's segments, integrated
gradients' completeness gap) come from each method's own ``*_result`` / ``*_explain`` function.

Speed is chosen by timing by default (batch sizes, Winograd); ``set_deterministic(True)``, the
``deterministic()`` context manager or ``CNNLENS_DETERMINISTIC=1`` use fixed choices instead, so two
processes compute bit-identical maps. ``clear_caches()`` forgets every process-wide cache.
"""

from __future__ import annotations

from cnnlens.explain import registry
from cnnlens.explain.accel import clear_caches, deterministic, is_deterministic, set_deterministic
# the order of these imports is the registry's order: the CLI's --methods list and `--methods all`
from cnnlens.explain.saliency import masked_image, saliency
from cnnlens.explain.smoothgrad import smoothgrad
from cnnlens.explain.guided_backprop import guided_backprop
from cnnlens.explain.integrated_gradients import integrated_gradients
from cnnlens.explain.input_x_gradient import input_x_gradient
from cnnlens.explain.deconvnet import deconvnet
from cnnlens.explain.deeplift import deeplift
from cnnlens.explain.deeplift_shap import deeplift_shap
from cnnlens.explain.gradient_shap import gradient_shap
from cnnlens.explain.vargrad import vargrad
from cnnlens.explain.smoothgrad_squared import smoothgrad_squared
from cnnlens.explain.guided_ig import guided_ig
from cnnlens.explain.blur_ig import blur_ig
from cnnlens.explain.lrp import lrp
from cnnlens.explain.xrai import xrai
from cnnlens.explain.grad_cam import grad_cam
from cnnlens.explain.cam import cam
from cnnlens.explain.guided_grad_cam import guided_grad_cam
from cnnlens.explain.grad_cam_pp import grad_cam_pp
from cnnlens.explain.xgrad_cam import xgrad_cam
from cnnlens.explain.layer_cam import layer_cam
from cnnlens.explain.hires_cam import hires_cam
from cnnlens.explain.score_cam import score_cam
from cnnlens.explain.ss_cam import ss_cam
from cnnlens.explain.is_cam import is_cam
from cnnlens.explain.ablation_cam import ablation_cam
from cnnlens.explain.eigen_cam import eigen_cam
from cnnlens.explain.full_grad import full_grad
from cnnlens.explain.occlusion import occlusion
from cnnlens.explain.lime import lime, lime_explain
from cnnlens.explain.rise import rise
from cnnlens.explain.kernel_shap import kernel_shap
from cnnlens.explain.feature_ablation import feature_ablation
from cnnlens.explain.extremal import extremal_perturbation
# feature visualisation: images and exemplars rather than per-pixel maps, so not in the registry (issue 14)
from cnnlens.explain.activation_max import activation_maximization, class_model_images, color_correlation, spectrum_decay
from cnnlens.explain.exemplars import choose_filters, dataset_exemplars, layer_exemplars
from cnnlens.explain.receptive_field import receptive_field
from cnnlens.explain.robustness import Transforms

METHODS = registry.functions()

__all__ = ["METHODS", "blur_ig", "cam", "clear_caches", "deconvnet", "deeplift", "deeplift_shap", "deterministic", "grad_cam",
           "gradient_shap", "guided_backprop", "guided_grad_cam", "guided_ig", "input_x_gradient", "integrated_gradients",
           "is_deterministic", "lime", "lime_explain", "masked_image", "occlusion", "registry", "saliency",
           "set_deterministic", "smoothgrad", "smoothgrad_squared", "vargrad", "xrai"]
__all__ += ["ablation_cam", "eigen_cam", "grad_cam_pp", "hires_cam", "is_cam", "layer_cam", "score_cam", "ss_cam",
            "xgrad_cam"]  # the CAM family
__all__ += ["full_grad"]
__all__ += ["lrp"]  # layer-wise relevance propagation, its rules and composites
__all__ += ["extremal_perturbation", "feature_ablation", "kernel_shap", "rise"]  # the perturbation methods on superpixels and masks
__all__ += ["Transforms", "activation_maximization", "choose_filters", "class_model_images", "color_correlation", "spectrum_decay",
            "dataset_exemplars", "layer_exemplars", "receptive_field"]  # feature visualisation
