"""Run TorchRay's extremal-perturbation parts in the peers' venv (`make peers`: .venv-peers, where torchvision
may live).

    .venv-peers/bin/python tests/peers/torchray_peer.py IN.pt OUT.pt

IN.pt holds mask parameters, a sigma, images and masks; OUT.pt gets TorchRay's smooth masks of those
parameters (step 1, cropped to the image) and its fade perturbation of the images through those masks.
"""

from __future__ import annotations

import sys

import torch
from torchray.attribution.extremal_perturbation import FADE_PERTURBATION, MaskGenerator, Perturbation

job = torch.load(sys.argv[1])
params, sigma = job["params"], job["sigma"]
generator = MaskGenerator(tuple(params.shape[1:]), 1, sigma)
masks = generator.generate(params[:, None])[0][:, 0]
x, m = job["images"], job["masks"]
faded = torch.cat([Perturbation(x[i:i + 1], num_levels=job["levels"], type=FADE_PERTURBATION).apply(m[i:i + 1, None])
                   for i in range(len(x))])
torch.save({"masks": masks, "faded": faded}, sys.argv[2])
