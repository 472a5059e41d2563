"""A Food-11-like RGB stand-in for the feature-visualisation benchmark (issue 14): no Food-11 copy is on the
machines we run on, so photos of plates are drawn instead, in an ImageFolder layout (``train/``, ``val/``,
one folder per class, PNG), for ``cnnlens train --data folder:DIR``.

Four classes, each a plate (cream disc, random place and size) on a tablecloth of random hue, lit from a
random side, with pixel noise: noodles (yellow wavy strands on a pale sauce), salad (green leaves with
red tomato pieces), soup (an orange-brown bowl with a white cream ring), rice (white grains, a brown curry
on one side). The colours vary per image (hue and brightness jitter), so the data's colour covariance is
its own and not ImageNet's.

    .venv/bin/python benchmarks/food_plates.py /tmp/plates --train 150 --val 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("noodles", "rice", "salad", "soup")


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, soft: float = 1.0) -> np.ndarray:
    """A soft disc mask in [0,1]."""
    return np.clip((r - np.hypot(yy - cy, xx - cx)) / soft + 0.5, 0.0, 1.0)


def draw_plate(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One ``[size,size,3]`` float image in [0,1] of class ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    hue = rng.uniform(0, 2 * np.pi)  # tablecloth: any hue, moderate saturation
    cloth = 0.45 + 0.2 * np.array([np.cos(hue), np.cos(hue - 2.1), np.cos(hue + 2.1)]) + rng.uniform(-0.1, 0.1)
    img = np.ones((size, size, 3)) * cloth
    stripes = 0.04 * np.sign(np.sin((xx + yy) * rng.uniform(0.3, 0.6)))[..., None]  # woven cloth
    img = img + stripes
    cy, cx = size / 2 + rng.uniform(-5, 5, 2)
    r = size * rng.uniform(0.36, 0.44)
    plate = _disc(yy, xx, cy, cx, r)[..., None]
    img = img * (1 - plate) + plate * np.array([0.93, 0.91, 0.86])
    inner = _disc(yy, xx, cy, cx, r * 0.78)[..., None]
    ry, rx = yy - cy, xx - cx
    jitter = rng.uniform(0.85, 1.15, 3)  # each image's colours a little off
    if kind == "noodles":
        angle = rng.uniform(0, np.pi)
        u = rx * np.cos(angle) + ry * np.sin(angle)
        v = -rx * np.sin(angle) + ry * np.cos(angle)
        strands = (np.sin(u * 1.3 + 2.0 * np.sin(v * 0.35 + rng.uniform(0, 6))) > 0.2).astype(float)[..., None]
        base = np.array([0.95, 0.85, 0.6]) * jitter
        food = base * (1 - strands) + np.array([0.98, 0.82, 0.25]) * jitter * strands
    elif kind == "salad":
        food = np.ones((size, size, 3)) * np.array([0.25, 0.55, 0.15]) * jitter
        for _ in range(int(rng.integers(25, 40))):  # leaves, some tomato pieces
            py, px = cy + rng.uniform(-r, r) * 0.7, cx + rng.uniform(-r, r) * 0.7
            colour = (np.array([0.85, 0.12, 0.08]) if rng.random() < 0.25
                      else np.array([0.2, rng.uniform(0.45, 0.8), 0.1])) * jitter
            m = _disc(yy, xx, py, px, rng.uniform(2, 4.5))[..., None]
            food = food * (1 - m) + m * colour
    elif kind == "soup":
        food = np.ones((size, size, 3)) * np.array([0.85, 0.45, 0.15]) * jitter
        ring = np.exp(-((np.hypot(ry, rx) - r * rng.uniform(0.3, 0.5)) ** 2) / 3.0)[..., None]
        food = food * (1 - ring) + ring * np.array([0.97, 0.95, 0.9])
    else:  # rice with curry on one side
        grains = rng.random((size, size)) < 0.35
        food = np.where(grains[..., None], np.array([0.97, 0.96, 0.92]), np.array([0.85, 0.84, 0.8]))
        side = rng.uniform(0, 2 * np.pi)
        curry = ((rx * np.cos(side) + ry * np.sin(side)) > r * 0.15).astype(float)[..., None]
        food = food * (1 - curry) + curry * np.array([0.62, 0.38, 0.12]) * jitter
    img = img * (1 - inner) + inner * food
    light = 1 + 0.25 * ((xx - size / 2) * np.cos(hue * 3) + (yy - size / 2) * np.sin(hue * 3)) / size
    img = img * light[..., None] * rng.uniform(0.75, 1.1) + rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1)


def write_plates(root: Path, train: int, val: int, size: int = 64, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<i>.png``: ``train`` and ``val`` images per class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray((draw_plate(kind, rng, size) * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=150, help="training images per class")
    parser.add_argument("--val", type=int, default=40, help="validation images per class")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_plates(args.root, args.train, args.val, args.size, args.seed))


if __name__ == "__main__":
    main()
