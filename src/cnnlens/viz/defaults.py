"""The options ``cnnlens explain`` and ``cnnlens report`` draw with unless told otherwise: one table that
both read, so that the same image gets the same map (and the same masked original) in either.

The library functions keep their papers' defaults (occlusion's black patches at stride 1, LIME's 1000
samples, ...); these are the commands' choices for small images on a laptop CPU, each with its reason.
``cnnlens explain`` records the options every method actually ran with in its ``index.json``.

>>> method_options(["occlusion", "saliency"])
{'occlusion': {'patch': 5, 'stride': 2, 'fill': 'mean'}}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Per method id: keyword arguments the commands pass.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    # the seeds' 5x5 patches every 2 pixels (a quarter of stride 1's passes); the image's mean colour,
    # because on dark faces a black patch hides little (measured on the demo faces)
    "occlusion": {"patch": 5, "stride": 2, "fill": "mean"},
    # the sample counts below are the report's, sized so the demo's report takes well under a minute on
    # 2 CPU cores: LIME 300 samples (lime's own default 1000), SmoothGrad 12 noisy copies (the paper's 50),
    # integrated gradients 16 steps (Captum's 50); raise them with -o METHOD.NAME=VALUE / --lime-samples ...
    "lime": {"n_samples": 300},
    "smoothgrad": {"n_samples": 12},
    "integrated-gradients": {"n_steps": 16},
}
#: The masked original keeps the pixels whose saliency is at or above this percentile (the top 25%).
MASK_PERCENTILE = 75.0
#: LIME's figure: regions shown for and against the class.
LIME_TOP_K = 5


def method_options(methods: Iterable[str]) -> dict[str, dict[str, Any]]:
    """A fresh copy of :data:`METHOD_OPTIONS` for the ``methods`` that have any."""
    return {m: dict(METHOD_OPTIONS[m]) for m in methods if m in METHOD_OPTIONS}
