"""Run pytorch-grad-cam's CAMs in the peers' venv (`make peers`: .venv-peers, where torchvision may live).

    .venv-peers/bin/python tests/peers/grad_cam_peer.py TESTS_DIR IN.pt OUT.pt

IN.pt holds the random model's constructor arguments and state dict (conftest.ResidualNet), the images, the
targets and the layer; OUT.pt gets pytorch-grad-cam's maps per method (its own defaults: ReLU, scaled to [0,1]).
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, sys.argv[1])
from conftest import ResidualNet  # noqa: E402
from pytorch_grad_cam import (AblationCAM, EigenCAM, FullGrad, GradCAMPlusPlus, HiResCAM, LayerCAM,  # noqa: E402
                              ScoreCAM, XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

job = torch.load(sys.argv[2])
model = ResidualNet(*job["args"]).double().eval()
model.load_state_dict(job["state"])
x, targets = job["images"], [ClassifierOutputTarget(int(t)) for t in job["targets"]]
layer = dict(model.named_modules())[job["layer"]]
out = {}
for name, cls in {"hires-cam": HiResCAM, "ablation-cam": AblationCAM, "eigen-cam": EigenCAM,
                  "grad-cam-pp": GradCAMPlusPlus, "xgrad-cam": XGradCAM, "layer-cam": LayerCAM,
                  "score-cam": ScoreCAM, "full-grad": FullGrad}.items():
    with cls(model=model, target_layers=[] if name == "full-grad" else [layer]) as cam:
        if hasattr(cam, "batch_size"):
            cam.batch_size = 16
        out[name] = torch.from_numpy(cam(input_tensor=x, targets=targets)).double()
torch.save(out, sys.argv[3])
