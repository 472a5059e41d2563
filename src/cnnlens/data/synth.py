"""Synthetic 48x48 gray faces whose expression is carried only by known parts, with ground-truth masks.

Every face is drawn from per-image parameters on a coordinate grid, a whole batch at once (soft shapes from
signed distances; no per-pixel Python). Two groups of parameters:

* **Nuisance, independent of the class**: face position, size and rotation, skin and background
  brightness, lighting gradient, background texture, hair (colour, hairline, length), nose, eye and mouth
  placement, ink darkness, pixel noise.
* **Expression, the only thing that depends on the class**: brows (height, inner-end tilt, arch), eyes
  (openness), mouth (corner curve, opening, width, asymmetry) and nose wrinkles. Each class has a mean
  setting in :data:`EXPRESSIONS`, every face is jittered around it (:data:`JITTER`), and one face in ten
  (:data:`BLEND_P`) is blended part of the way towards a confusable partner class (:data:`PARTNERS`:
  fear/surprise, angry/disgust/sad, sad/neutral, happy/neutral), so those pairs overlap as in real FER2013.

Calibration (cnnlens small_cnn, 3000 training faces, 5 epochs, Adam one-cycle 3e-3, flip/shift/rotation):
94% validation accuracy, the errors in the designed pairs (angry<->disgust, surprise->fear, sad->angry/disgust).

The mask of a face is the set of pixels its expression parts were drawn on, dilated by one pixel. Outside
the mask a face is exactly what it would be without the parts: ``make_faces(n, seed, parts=False)`` draws the
same faces (same nuisance, same noise) without them, which is how the tests blank the masked pixels with
the face's own skin and show that nothing outside the mask predicts the class.

Classes are balanced: ``n`` images hold ``n // 7`` or ``n // 7 + 1`` of each class, in random order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnnlens._atomic import output_dir
from cnnlens._checks import check_count, is_int, is_number
from cnnlens._types import PathArg
from cnnlens.data.fer import FER_CLASSES, FER_SIZE, masks_path, write_fer_csv
from cnnlens.data.split import stratified_split

#: Version of the drawing; stored beside the data so a change of generator is visible.
SYNTH_VERSION = 1
#: Name of the CSV written by :func:`write_faces` (the masks are ``faces.masks.npy``).
FACES_CSV = "faces.csv"

#: Expression parameters, in this order, and their value on a neutral face.
PARAMS: tuple[str, ...] = ("brow_raise", "brow_tilt", "brow_arch", "eye_open", "mouth_curve", "mouth_open",
                           "mouth_width", "mouth_asym", "wrinkle")
_NEUTRAL = dict(brow_raise=0.0, brow_tilt=0.0, brow_arch=0.3, eye_open=1.0, mouth_curve=0.0, mouth_open=0.0,
                mouth_width=1.0, mouth_asym=0.0, wrinkle=0.0)
#: Mean expression of each FER class (deviations from neutral); brow_tilt > 0 raises the inner ends.
EXPRESSIONS: dict[str, dict[str, float]] = {
    "Angry": dict(brow_raise=-0.9, brow_tilt=-1.0, brow_arch=0.0, eye_open=0.65, mouth_curve=-0.25,
                  mouth_width=0.8, wrinkle=0.35),
    "Disgust": dict(brow_raise=-0.6, brow_tilt=-0.4, brow_arch=0.1, eye_open=0.55, mouth_curve=-0.45,
                    mouth_open=0.15, mouth_width=0.9, mouth_asym=0.7, wrinkle=1.0),
    "Fear": dict(brow_raise=0.8, brow_tilt=0.7, brow_arch=0.2, eye_open=1.45, mouth_curve=-0.35, mouth_open=0.45,
                 mouth_width=1.15),
    "Happy": dict(brow_raise=0.1, brow_arch=0.4, eye_open=0.55, mouth_curve=1.0, mouth_open=0.35, mouth_width=1.25),
    "Sad": dict(brow_raise=-0.1, brow_tilt=0.9, brow_arch=0.0, eye_open=0.8, mouth_curve=-0.8, mouth_width=0.9),
    "Surprise": dict(brow_raise=1.0, brow_tilt=0.15, brow_arch=0.7, eye_open=1.55, mouth_open=1.0, mouth_width=0.7),
    "Neutral": dict(),
}
#: Classes each class is blended towards (one chosen per face): the confusions of real FER2013.
PARTNERS: dict[str, tuple[str, ...]] = {
    "Angry": ("Disgust", "Sad"), "Disgust": ("Angry", "Sad"), "Fear": ("Surprise",), "Happy": ("Neutral",),
    "Sad": ("Angry", "Disgust", "Neutral"), "Surprise": ("Fear",), "Neutral": ("Sad",),
}
#: Within-class jitter (standard deviation) of each expression parameter.
JITTER: dict[str, float] = dict(brow_raise=0.2, brow_tilt=0.2, brow_arch=0.15, eye_open=0.12, mouth_curve=0.15,
                                mouth_open=0.1, mouth_width=0.08, mouth_asym=0.15, wrinkle=0.15)
#: A fraction BLEND_P of the faces is blended towards a partner by a weight uniform in BLEND_RANGE; past 0.5
#: such a face looks more like its partner than its own class, which sets the floor of the confusions.
BLEND_P = 0.1
BLEND_RANGE = (0.2, 0.65)

_CHUNK = 32  # images drawn per numpy pass: keeps the [chunk,48,48] temporaries in cache-sized blocks


def make_faces(n: int, seed: int = 0, *, parts: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` synthetic faces: ``(images uint8 [N,48,48], labels int64 [N], masks bool [N,48,48])``.

    Labels follow :data:`cnnlens.data.fer.FER_CLASSES`. ``masks`` marks the pixels of the parts that carry
    the expression (brows, eyes, mouth, nose wrinkles), dilated by one pixel. ``parts=False`` draws the very
    same faces without those parts (labels and masks unchanged), i.e. the skin under the mask.

    >>> images, labels, masks = make_faces(8, seed=0)
    >>> images.shape, labels[:3], masks.any(axis=(1, 2)).all()
    ((8, 48, 48), array([...]), True)
    """
    _check_n_seed(n, seed)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(FER_CLASSES)).astype(np.int64)
    nuisance = _draw_nuisance(rng, n)
    expression = _draw_expression(rng, labels)
    images = np.empty((n, FER_SIZE, FER_SIZE), dtype=np.uint8)
    masks = np.empty((n, FER_SIZE, FER_SIZE), dtype=bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        noise_rng = np.random.default_rng([seed, start])  # noise per chunk: same faces whatever is drawn
        images[sl], masks[sl] = _render({k: v[sl] for k, v in nuisance.items()},
                                        {k: v[sl] for k, v in expression.items()}, noise_rng, parts)
    return images, labels, masks


def write_faces(out_dir: PathArg, n: int, seed: int = 0, *, test_fraction: float = 0.1, val_fraction: float = 0.0,
                overwrite: bool = False) -> Path:
    """Write ``n`` synthetic faces to ``out_dir`` as ``faces.csv`` (Kaggle FER2013 layout) + ``faces.masks.npy``.

    Usage column: a stratified ``test_fraction`` of the rows is PrivateTest (split ``test``), a further
    ``val_fraction`` PublicTest (split ``val``), the rest Training. ``synth.json`` records the generator
    version, ``n``, ``seed`` and the fractions. The folder is written atomically as a whole; an existing
    ``out_dir`` raises :class:`FileExistsError` unless ``overwrite`` and it holds earlier synthetic faces
    (nothing else is ever replaced). Returns the CSV's path.

    >>> write_faces("data/faces", 3500, seed=0)   # then load_dataset("synth:data/faces")
    PosixPath('data/faces/faces.csv')
    """
    _check_n_seed(n, seed)
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not is_number(f) or not 0.0 <= f < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {f!r}")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(f"test_fraction + val_fraction must be below 1 so that training rows remain, "
                         f"got {test_fraction} + {val_fraction}")
    if n < 2 and test_fraction + val_fraction > 0:
        raise ValueError(f"n={n} face cannot be split; pass test_fraction=0 and val_fraction=0 (or a larger n)")
    images, labels, masks = make_faces(n, seed)
    usage = np.full(n, "Training", dtype=object)
    rest = np.arange(n)
    if test_fraction > 0:
        keep, test = stratified_split(labels, test_fraction, seed)
        usage[test.numpy()] = "PrivateTest"
        rest = keep.numpy()
    if val_fraction > 0:
        keep, val = stratified_split(labels[rest], val_fraction / (1.0 - test_fraction), seed + 1)
        usage[rest[val.numpy()]] = "PublicTest"
    out_dir = Path(out_dir)
    with output_dir(out_dir, kind="synth", overwrite=overwrite) as tmp:
        write_fer_csv(tmp / FACES_CSV, images, labels, usage.tolist())
        np.save(masks_path(tmp / FACES_CSV), masks)
        meta = {"generator": "cnnlens.data.synth", "version": SYNTH_VERSION, "n": int(n), "seed": int(seed),
                "test_fraction": test_fraction, "val_fraction": val_fraction, "classes": list(FER_CLASSES),
                "class_counts": np.bincount(labels, minlength=len(FER_CLASSES)).tolist()}
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir / FACES_CSV


def _check_n_seed(n: int, seed: int) -> None:
    check_count(n, "n", hint=" (number of faces)", numpy=True)
    if not is_int(seed, 0, numpy=True):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


# --- parameters -------------------------------------------------------------------------------------------

def _draw_nuisance(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Everything that does not depend on the class, drawn without looking at the labels."""
    u = lambda lo, hi: rng.uniform(lo, hi, n).astype(np.float32)  # noqa: E731
    return dict(
        cx=u(22.0, 26.0), cy=u(23.0, 27.0), scale=u(19.5, 22.5), angle=u(-0.14, 0.14),
        skin=u(95.0, 215.0), light_u=u(-0.18, 0.18), light_v=u(-0.12, 0.12),
        bg=u(10.0, 245.0), bg_amp=u(0.0, 20.0), bg_fx=u(-0.5, 0.5), bg_fy=u(-0.5, 0.5), bg_phase=u(0, 2 * np.pi),
        bg_amp2=u(0.0, 12.0), bg_fx2=u(-1.0, 1.0), bg_fy2=u(-1.0, 1.0), bg_phase2=u(0, 2 * np.pi),
        hair=u(5.0, 150.0), hairline=u(-0.92, -0.74), hair_curve=u(0.0, 0.35), hair_side=u(-0.6, 0.8),
        nose_len=u(0.12, 0.24), nose_dark=u(0.06, 0.2), eye_x=u(0.3, 0.36), eye_y=u(-0.16, -0.08),
        mouth_y=u(0.44, 0.52), ink=u(0.15, 0.35), brow_ink=u(0.15, 0.4),
        asym_sign=rng.choice([-1.0, 1.0], n).astype(np.float32), noise=u(1.5, 5.0),
    )


def _draw_expression(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Expression parameters: the class mean, blended towards a confusable partner, jittered."""
    means = np.array([[EXPRESSIONS[c].get(p, _NEUTRAL[p]) for p in PARAMS] for c in FER_CLASSES], dtype=np.float32)
    # partner per face: one of its class's partners, uniformly
    options = [[FER_CLASSES.index(p) for p in PARTNERS[c]] for c in FER_CLASSES]
    pick = rng.random(labels.size)
    partner = np.array([options[c][int(q * len(options[c]))] for c, q in zip(labels.tolist(), pick.tolist())])
    blended = rng.random(labels.size) < BLEND_P
    blend = np.where(blended, rng.uniform(*BLEND_RANGE, labels.size), 0.0).astype(np.float32)[:, None]
    jitter = np.array([JITTER[p] for p in PARAMS], dtype=np.float32)
    value = (1 - blend) * means[labels] + blend * means[partner]
    value += rng.standard_normal((labels.size, len(PARAMS))).astype(np.float32) * jitter
    out = {p: value[:, i] for i, p in enumerate(PARAMS)}
    out["eye_open"] = np.clip(out["eye_open"], 0.3, 1.9)
    out["mouth_open"] = np.clip(out["mouth_open"], 0.0, 1.4)
    out["mouth_width"] = np.clip(out["mouth_width"], 0.55, 1.45)
    out["mouth_asym"] = np.clip(out["mouth_asym"], 0.0, 1.2)
    # wrinkles are either visibly there or absent, so that the mask never holds an invisible part
    out["wrinkle"] = np.where(out["wrinkle"] < 0.1, 0.0, np.minimum(out["wrinkle"], 1.3)).astype(np.float32)
    return out


# --- drawing ------------------------------------------------------------------------------------------------

def _ramp(signed_px: np.ndarray) -> np.ndarray:
    """Coverage of a pixel whose centre is ``signed_px`` pixels inside an edge (1 px anti-aliasing, compact)."""
    out = signed_px + 0.5
    return np.clip(out, 0.0, 1.0, out=out)


def _ellipse(u: np.ndarray, v: np.ndarray, u0, v0, a, b, s) -> np.ndarray:
    """Soft filled ellipse in face units (centre u0,v0; semi-axes a,b); ``s`` = pixels per face unit."""
    rho = np.sqrt(((u - u0) / a) ** 2 + ((v - v0) / b) ** 2)
    return _ramp((1.0 - rho) * np.minimum(a, b) * s)


def _stroke(u, v, curve_v, slope, u_lo, u_hi, half_thick, s) -> np.ndarray:
    """Soft stroke of half-thickness ``half_thick`` along ``v = curve_v(u)`` for ``u`` in ``[u_lo, u_hi]``."""
    dist = np.abs(v - curve_v) / np.sqrt(1.0 + slope**2)  # vertical -> normal distance for a sloped curve
    along = np.minimum(u - u_lo, u_hi - u)
    return _ramp((half_thick - dist) * s) * _ramp(along * s)


def _render(nz: dict[str, np.ndarray], ex: dict[str, np.ndarray], noise_rng: np.random.Generator,
            parts: bool) -> tuple[np.ndarray, np.ndarray]:
    """Draw one chunk: ``(uint8 images, bool masks)``; ``parts=False`` leaves the expression parts out."""
    m = nz["cx"].size
    col = lambda a: a[:, None, None]  # noqa: E731  per-image scalar -> broadcast over the grid
    grid = np.arange(FER_SIZE, dtype=np.float32)
    gx, gy = grid[None, None, :], grid[None, :, None]
    s = col(nz["scale"])
    cos, sin = col(np.cos(nz["angle"])), col(np.sin(nz["angle"]))
    dx, dy = gx - col(nz["cx"]), gy - col(nz["cy"])
    u = (dx * cos + dy * sin) / s  # face coordinates: u to the face's right, v down, 1 = half the face height
    v = (-dx * sin + dy * cos) / s

    # background: a base level and two random gratings
    img = (col(nz["bg"])
           + col(nz["bg_amp"]) * np.sin(col(nz["bg_fx"]) * gx + col(nz["bg_fy"]) * gy + col(nz["bg_phase"]))
           + col(nz["bg_amp2"]) * np.sin(col(nz["bg_fx2"]) * gx + col(nz["bg_fy2"]) * gy + col(nz["bg_phase2"])))
    img = np.broadcast_to(img, (m, FER_SIZE, FER_SIZE)).astype(np.float32)
    hair, skin = col(nz["hair"]), col(nz["skin"])
    # hair behind the head down to hair_side, then the neck and the face, then the fringe over the forehead
    head = _ellipse(u, v, 0.0, -0.05, 0.9, 1.12, s)
    back = head * _ramp((col(nz["hair_side"]) - v) * s)
    img += back * (hair - img)
    shade = skin * (1.0 + col(nz["light_u"]) * u + col(nz["light_v"]) * v)
    neck = _ramp((0.34 - np.abs(u)) * s) * _ramp((v - 0.7) * s)
    face = np.maximum(_ellipse(u, v, 0.0, 0.0, 0.78, 1.0, s), neck)
    img += face * (shade - img)
    fringe = head * _ramp((col(nz["hairline"]) + col(nz["hair_curve"]) * u**2 - v) * s)
    img += fringe * (hair - img)
    # nose (class-independent): a bridge shadow and two nostrils
    nose_len = col(nz["nose_len"])
    bridge = _ramp((0.025 - np.abs(u - 0.05)) * s) * _ramp((v + 0.02) * s) * _ramp((nose_len - v) * s)
    nostrils = (_ellipse(u, v, -0.07, nose_len + 0.03, 0.045, 0.03, s)
                + _ellipse(u, v, 0.07, nose_len + 0.03, 0.045, 0.03, s))
    img -= np.maximum(bridge * 0.6, nostrils) * col(nz["nose_dark"]) * shade

    # the expression parts, drawn on a copy: the mask is the same whether or not they are kept (parts=False)
    ink = shade * col(nz["ink"])
    canvas = img.copy()
    # nose wrinkles: two short slanted lines each side of the bridge, darkness = wrinkle strength
    wr = col(ex["wrinkle"])
    wrinkles = np.zeros_like(img)
    for side in (-1.0, 1.0):
        for off in (0.0, 0.07):
            uc = side * (0.13 + off)
            curve = -0.02 + off + 0.5 * side * (u - uc)
            wrinkles = np.maximum(wrinkles, _stroke(u, v, curve, 0.5, uc - 0.05, uc + 0.05, 0.03, s))
    wrinkle_ink = wrinkles * np.clip(wr, 0.0, 1.0) * 0.7
    canvas -= wrinkle_ink * shade
    # eyes: white of the eye (its height = openness) with a dark iris clipped to it, then the upper lid
    ex_, ey = col(nz["eye_x"]), col(nz["eye_y"])
    half_h = 0.1 * col(ex["eye_open"])
    eyes = np.zeros_like(img)
    for side in (-1.0, 1.0):
        white = _ellipse(u, v, side * ex_, ey, 0.15, half_h, s)
        iris = _ellipse(u, v, side * ex_, ey, 0.07, 0.07, s) * white
        lid_half_thick = 0.025 + 0.01 * col(ex["eye_open"])
        lid = _stroke(u, v, ey - half_h, 0.0, side * ex_ - 0.16, side * ex_ + 0.16, lid_half_thick, s)
        canvas += white * (np.minimum(shade * 1.3, 250.0) - canvas)
        canvas += np.maximum(iris, lid) * (ink - canvas)
        eyes = np.maximum(eyes, np.maximum(white, lid))
    # brows: inner end at |u| = 0.12, outer end at 0.5; raise lifts both, tilt lifts the inner end, arch the middle
    raise_, tilt, arch = col(ex["brow_raise"]), col(ex["brow_tilt"]), col(ex["brow_arch"])
    brows = np.zeros_like(img)
    for side in (-1.0, 1.0):
        t = (side * u - 0.12) / 0.38  # 0 at the inner end, 1 at the outer end
        curve = ey - 0.25 - 0.12 * raise_ - 0.14 * tilt * (1.0 - t) - 0.06 * arch * 4.0 * t * (1.0 - t)
        slope = (0.14 * tilt - 0.06 * arch * 4.0 * (1.0 - 2.0 * t)) / 0.38
        lo, hi = (0.12, 0.5) if side > 0 else (-0.5, -0.12)
        brows = np.maximum(brows, _stroke(u, v, curve, slope, lo, hi, 0.06, s))
    brow_ink = shade * col(nz["brow_ink"])
    canvas += brows * (brow_ink - canvas)
    # mouth: a lip line v = y + curve * (u/w)^2 (+ asymmetry), opened into a dark lens-shaped cavity
    w = 0.28 * col(ex["mouth_width"])
    q = np.clip(u / w, -1.5, 1.5)
    asym = col(ex["mouth_asym"]) * col(nz["asym_sign"])
    lip = col(nz["mouth_y"]) - 0.19 * col(ex["mouth_curve"]) * q**2 - 0.06 * asym * (q + 1.0) * 0.5
    lip_slope = (-0.38 * col(ex["mouth_curve"]) * q - 0.03 * asym) / w
    opening = col(ex["mouth_open"]) * (1.0 - q**2)
    cavity = _ramp(np.minimum(v - (lip - 0.11 * opening), (lip + 0.16 * opening) - v) * s) * (np.abs(q) < 1.0)
    cavity = cavity * np.clip(col(ex["mouth_open"]) * 8.0, 0.0, 1.0)
    line = _stroke(u, v, lip, lip_slope, -w, w, 0.05, s)
    mouth = np.maximum(cavity, line)
    canvas += mouth * (shade * 0.18 - canvas)
    drawn = np.maximum(np.maximum(wrinkle_ink, eyes), np.maximum(brows, mouth))
    mask = _dilate(drawn > 1e-3)
    if parts:
        img = canvas
    img += noise_rng.standard_normal(img.shape, dtype=np.float32) * col(nz["noise"])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of ``[N,H,W]`` masks (the parts plus a one-pixel margin)."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[:, dy : dy + h, dx : dx + w]
    return out
