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

if "steps" in job:  # the whole method on conftest's CentreSquare, one image per call (TorchRay's interface)
    sys.path.insert(0, job["tests"])
    from conftest import CentreSquare, centre_square_images  # noqa: E402
    from torchray.attribution.extremal_perturbation import extremal_perturbation  # noqa: E402

    square = centre_square_images(2)
    out = [extremal_perturbation(CentreSquare(), square[i:i + 1], 0, areas=[job["area"]],
                                 perturbation=FADE_PERTURBATION, max_iter=job["steps"] + 1, step=1, sigma=sigma,
                                 num_levels=job["levels"], jitter=False)[0] for i in range(len(square))]
    torch.save({"masks": masks, "faded": faded, "extremal": torch.cat(out)[:, 0]}, sys.argv[2])
