"""The figure choices ``cnnlens explain`` and ``cnnlens report`` share, so that the same image gets the same
masked original and the same LIME figure in either.

The methods' own default options for the commands (occlusion's grid, LIME's samples, ...) are facts of
each method, in the registry beside its function: ``cnnlens.explain.registry.default_options``.
"""

from __future__ import annotations

#: The masked original keeps the pixels whose saliency is at or above this percentile (the top 25%).
MASK_PERCENTILE = 75.0
#: LIME's figure: regions shown for and against the class.
LIME_TOP_K = 5
