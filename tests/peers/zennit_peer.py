"""Run Zennit's LRP composites in the peers' venv (`make peers`: .venv-peers, where torchvision may live).

    .venv-peers/bin/python tests/peers/zennit_peer.py IN.pt OUT.pt

IN.pt holds an nn.Sequential model (float64), the images and the targets; OUT.pt gets Zennit's relevance per
composite, with BatchNorm merged by Zennit's own canonizer and the output relevance ``one-hot * logit`` (the
paper's start, cnnlens's; Zennit's users often pass the one-hot alone).
"""

from __future__ import annotations

import sys

import torch
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat

job = torch.load(sys.argv[1], weights_only=False)
model, x, targets = job["model"].eval(), job["images"], torch.tensor(job["targets"])
with torch.no_grad():
    logits = model(x)
start = torch.zeros_like(logits).scatter_(1, targets[:, None], logits.gather(1, targets[:, None]))
composites = {
    "epsilon-plus-flat": lambda c: EpsilonPlusFlat(canonizers=c),
    "epsilon-gamma-box": lambda c: EpsilonGammaBox(low=torch.zeros_like(x), high=torch.ones_like(x), canonizers=c),
    "epsilon-plus": lambda c: EpsilonPlus(canonizers=c),
    "epsilon-alpha2-beta1": lambda c: EpsilonAlpha2Beta1(canonizers=c),
}
out = {}
for name, make in composites.items():
    with Gradient(model=model, composite=make([SequentialMergeBatchNorm()])) as attributor:
        _, relevance = attributor(x, start)
    out[name] = relevance.detach()
torch.save(out, sys.argv[2])
