"""Faithfulness: does an explanation tell the truth about the model?

* :mod:`~cnnlens.faithfulness.deletion`: deletion and insertion curves (Petsiuk et al. 2018), beside a
  random pixel order.
* :mod:`~cnnlens.faithfulness.randomization`: the model-randomisation sanity check (Adebayo et al. 2018),
  cascading and independent, Spearman and SSIM.
* :mod:`~cnnlens.faithfulness.localization`: pointing game, relevance mass and rank accuracy against
  ground-truth masks, beside a centre prior and a random map; :mod:`~cnnlens.faithfulness.masks` reads
  user masks from PNG files.
* the peers' metrics: :mod:`~cnnlens.faithfulness.confidence` (Average Drop, Increase in Confidence; torch-cam),
  :mod:`~cnnlens.faithfulness.sensitivity` (infidelity, max-sensitivity; Captum), :func:`~cnnlens.faithfulness.road.road`
  (ROAD, MoRF and LeRF), :mod:`~cnnlens.faithfulness.random_logit` and :func:`~cnnlens.faithfulness.randomization.mprt`
  (Quantus's random logit and MPRT).
* :mod:`~cnnlens.faithfulness.runner`: all of them for many methods, with confidence intervals, figures
  and files (``cnnlens faithfulness RUN_DIR``).

Every metric takes plain tensors: ``(model, images [N,C,H,W], maps [N,H,W], targets, masks [N,H,W])``.
"""

from __future__ import annotations

from cnnlens.faithfulness.confidence import ConfidenceResult, confidence_change
from cnnlens.faithfulness.deletion import CurveResult, deletion, insertion, random_maps
from cnnlens.faithfulness.localization import (centre_prior, localization_scores, pointing_game, relevance_mass,
                                               relevance_rank)
from cnnlens.faithfulness.masks import load_mask_folder
from cnnlens.faithfulness.random_logit import RandomLogitResult, random_logit
from cnnlens.faithfulness.randomization import (LayerGroup, MprtResult, RandomizationResult, model_randomization, mprt,
                                                parameter_layers, spearman, ssim)
from cnnlens.faithfulness.road import RoadResult, road
from cnnlens.faithfulness.runner import (FaithfulnessResult, FaithfulnessSettings, Row, evaluate_faithfulness,
                                         evaluate_run_faithfulness)
from cnnlens.faithfulness.sensitivity import infidelity, max_sensitivity
from cnnlens.faithfulness.stats import mean_ci

__all__ = [
    "ConfidenceResult", "FaithfulnessSettings", "MprtResult", "RandomLogitResult", "RoadResult", "confidence_change",
    "infidelity", "max_sensitivity", "mprt", "random_logit", "road",
    "evaluate_run_faithfulness",
    "CurveResult", "FaithfulnessResult", "LayerGroup", "RandomizationResult", "Row", "centre_prior", "deletion",
    "evaluate_faithfulness", "insertion", "load_mask_folder", "localization_scores", "mean_ci", "model_randomization",
    "parameter_layers", "pointing_game", "random_maps", "relevance_mass", "relevance_rank", "spearman", "ssim",
]
