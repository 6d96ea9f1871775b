"""The built-in default dataset: procedurally generated fine-grained "birds".

``python -m tdsa_fast.train`` with no ``--data-root`` trains on this dataset, so the
project runs end to end on a laptop with no download. :func:`ensure_default_dataset`
renders it once (deterministically from :class:`SyntheticSpec`) into a cache folder in
CUB-200-2011's native layout, so the ordinary CUB parser reads it::

    <root>/images.txt               "ID relpath"            (1-based, contiguous)
    <root>/image_class_labels.txt   "ID CLASS"              (CLASS 1-based)
    <root>/train_test_split.txt     "ID 1|0"                (1 = train)
    <root>/classes.txt              "CLASSID NAME"
    <root>/images/NNN.ClassName/ClassName_KKKK.jpg
    <root>/spec.json                the spec, the generator version and the class codes

**One meta-class, a stylised songbird** (body, belly, head, wing, tail, legs, beak,
eye) seen side-on. A class is a *code*: one value for each of six local part attributes

==============  ===========================================  ======================
attribute       values                                        scale at 64 px
==============  ===========================================  ======================
beak            short cone / long needle / hooked             3-8 px long
eye             plain / pale eye-ring / dark eye-stripe       ring ~4 px across
wing bars       none / one / two pale bars across the wing    bars ~1-1.5 px wide
tail            plain / pale tip / forked                     tip ~3-4 px
crown           none / red crown patch                        ~8x3 px
breast          plain / dark spots                            spots ~1-2 px each
==============  ===========================================  ======================

(3*3*3*3*2*2 = 324 possible codes). :func:`class_codes` picks ``num_classes`` distinct
codes greedily (seeded): each new class differs from its nearest existing class in one
part (p = 0.7) or two, preferring values used least so far, so many class pairs differ
in a single part, no single part identifies a class, and telling the classes apart
needs several small parts combined.

Everything else is nuisance, drawn per image from the same distribution for every
class (the renderer draws all nuisance parameters, in a fixed order and number, before
it looks at the class code): pose (rotation +-25 deg, horizontal flip), scale
(0.62-0.92 of the frame), position (anywhere the whole bird fits), body / wing / belly /
head colours (random hue, so body colour carries no class information), beak and leg
colour, the contrast of the part markings (blended up to 20% towards the colour they
sit on), an optional perch, and a
cluttered background (colour gradient, low-frequency blotches, pixel noise, and 3-8
distractor shapes: leaves, twigs, blobs, and small beak-like triangles, bar-like
stripes, spot clusters and patches drawn *in the part colours*, so "a pale stripe /
dark dots / a red patch somewhere in the image" is not evidence of a class either).
A single attribute change alters at most about 1.5% of the pixels.

Why plain cross-entropy from scratch should struggle: the class evidence is a handful
of pixels at a few places that move with the bird's pose, the image is dominated by
class-irrelevant variation (colour, pose, clutter) that a small training set
(default 80 images a class) cannot average out, and the classes form tight clusters in
code space, so a global descriptor must resolve several small parts *jointly*.
A model that localises the bird's parts (what the MC / TDSA losses encourage by making
each class's channel group fire on distinct, discriminative regions) can learn it.
Measured (2 CPU cores shared with other jobs, one thread each, seed 0, the trainer's
default recipe: ResNet18, 64 px, 20 epochs): plain CE reaches 74% train / 26.3% test
accuracy (it memorises the nuisance), ResNet18 + TDSA 54% train / 37.3% test (chance 10%).
Generator version 1 (wider pose and scale ranges, fainter parts, more clutter, 16 classes
of 40 images) was not learnt by either loss within 12 epochs.

Default spec: 10 classes x (80 train + 30 test) = 1,100 JPEGs of 96x96 px (q90, 4:4:4),
rendered at 3x supersampling with LANCZOS down-sampling in about 7 s on one core. The
trainer resizes to 64 px by default; every part remains visible there (the eye markings,
wing bars and breast spots only just, on the smallest birds).

Determinism: each image has its own ``numpy`` Generator seeded from
``(seed, class index, image index)``; no global RNG, no dict/set ordering. The same spec
gives byte-identical files. :data:`GENERATOR_VERSION` is part of the folder name and the
spec hash, so changing the renderer invalidates old caches.
"""
from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "GENERATOR_VERSION",
    "ATTRIBUTES",
    "SyntheticSpec",
    "default_cache_dir",
    "dataset_dir",
    "ensure_default_dataset",
    "generate_dataset",
    "class_codes",
    "class_name",
    "render_sample",
    "sample_rng",
    "is_complete",
]

#: Bump whenever the renderer, the code picker or the layout changes: it is part of the
#: folder name and of the spec hash, so old caches are not reused.
GENERATOR_VERSION = 2

#: The class-defining part attributes, in code order: (attribute, value names).
ATTRIBUTES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("beak", ("ConeBill", "NeedleBill", "HookBill")),
    ("eye", ("PlainEye", "EyeRing", "EyeStripe")),
    ("wingbars", ("NoBars", "OneBar", "TwoBars")),
    ("tail", ("PlainTail", "PaleTip", "ForkTail")),
    ("crown", ("NoCrown", "RedCrown")),
    ("breast", ("PlainBreast", "Spotted")),
)
_SIZES = tuple(len(v) for _, v in ATTRIBUTES)
_NUM_CODES = int(np.prod(_SIZES))

_JPEG_QUALITY = 90
_SUPERSAMPLE = 3
_PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate.

    Defaults: 10 classes (a fine-grained problem with near-identical class pairs, small
    enough to train in minutes on 2 CPU cores), 80 train / 30 test images a class, stored
    at 96 px (the trainer's default 64 px input is a down-sample), seed 0.
    """

    num_classes: int = 10
    train_per_class: int = 80
    test_per_class: int = 30
    image_size: int = 96
    seed: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):  # plain ints (e.g. from numpy), for the hash
            object.__setattr__(self, f.name, int(getattr(self, f.name)))
        if not 2 <= int(self.num_classes) <= _NUM_CODES:
            raise ValueError(f"num_classes must be in [2, {_NUM_CODES}], got {self.num_classes}")
        if int(self.train_per_class) < 1 or int(self.test_per_class) < 0:
            raise ValueError(
                f"need train_per_class >= 1 and test_per_class >= 0, got "
                f"{self.train_per_class}/{self.test_per_class}")
        if int(self.image_size) < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


# --------------------------------------------------------------------------- cache paths

def default_cache_dir() -> pathlib.Path:
    """``$TDSA_FAST_CACHE`` if set (and non-empty), else ``~/.cache/tdsa_fast``."""
    env = os.environ.get("TDSA_FAST_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "tdsa_fast"


def _spec_record(spec: SyntheticSpec) -> dict:
    return {"generator": "tdsa_fast.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "spec": dataclasses.asdict(spec)}


def _spec_hash(spec: SyntheticSpec) -> str:
    blob = json.dumps(_spec_record(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def dataset_dir(spec: SyntheticSpec = SyntheticSpec(), cache_dir: Optional[_PathLike] = None
                ) -> pathlib.Path:
    """``<cache>/default-v<GENERATOR_VERSION>-<12-hex hash of spec + version>``."""
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / f"default-v{GENERATOR_VERSION}-{_spec_hash(spec)}"


def is_complete(root: _PathLike, spec: SyntheticSpec) -> bool:
    """Whether ``root`` is a finished dataset for ``spec``.

    Folders only ever appear under their final name by an atomic rename of a finished
    temporary folder, so this checks the record and the index files, not every image.
    """
    root = pathlib.Path(root)
    try:
        with open(root / "spec.json", "r", encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return False
    want = _spec_record(spec)
    if any(rec.get(k) != v for k, v in want.items()):
        return False
    names = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
    if not all((root / n).is_file() for n in names) or not (root / "images").is_dir():
        return False
    try:
        with open(root / "images.txt", "r", encoding="utf-8") as f:
            n_lines = sum(1 for line in f if line.strip())
    except OSError:
        return False
    return n_lines == spec.num_classes * (spec.train_per_class + spec.test_per_class)


# --------------------------------------------------------------------------- class codes

def class_codes(spec: SyntheticSpec = SyntheticSpec()) -> List[Tuple[int, ...]]:
    """The per-class part-attribute codes (one value index per :data:`ATTRIBUTES` entry).

    Distinct, seeded by ``spec.seed`` only (not by the image counts or size). Built
    greedily: start from a random code; each next class is an unused code at Hamming
    distance 1 (p = 0.7) or 2 from its nearest existing class, chosen at random among
    the candidates whose attribute values are used least so far (so every value of
    every attribute is used about equally often and no single part or value singles
    out a class). Every class thus has a neighbour differing in only one or two parts.
    """
    ss = np.random.SeedSequence([int(spec.seed), 0xC0DE, GENERATOR_VERSION])
    rng = np.random.Generator(np.random.PCG64(ss))
    space = np.array(list(np.ndindex(*_SIZES)), dtype=np.int64)          # [324, 6], fixed order
    first = int(rng.integers(len(space)))
    chosen = [first]
    used = np.zeros(len(space), dtype=bool)
    used[first] = True
    counts = [np.zeros(n, dtype=np.int64) for n in _SIZES]
    for i, v in enumerate(space[first]):
        counts[i][v] += 1
    # nearest-class distance of every code, updated incrementally
    dmin = (space != space[first]).sum(axis=1)
    while len(chosen) < spec.num_classes:
        want = 1 if rng.random() < 0.7 else 2
        free = ~used
        cand = np.flatnonzero(free & (dmin == want))
        if len(cand) == 0:
            cand = np.flatnonzero(free & (dmin <= 2) & (dmin >= 1))
        if len(cand) == 0:
            cand = np.flatnonzero(free)
        score = sum(counts[i][space[cand, i]] for i in range(len(_SIZES)))
        best = cand[score == score.min()]
        pick = int(best[int(rng.integers(len(best)))])
        chosen.append(pick)
        used[pick] = True
        for i, v in enumerate(space[pick]):
            counts[i][v] += 1
        dmin = np.minimum(dmin, (space != space[pick]).sum(axis=1))
    return [tuple(int(v) for v in space[j]) for j in chosen]


def class_name(code: Sequence[int]) -> str:
    """Readable class name from a code, e.g. ``HookBill_EyeRing_TwoBars_PaleTip_RedCrown_Spotted``."""
    return "_".join(vals[int(c)] for (_, vals), c in zip(ATTRIBUTES, code))


def sample_rng(seed: int, class_index: int, image_index: int) -> np.random.Generator:
    """The per-image Generator used by :func:`generate_dataset`."""
    ss = np.random.SeedSequence([int(seed), int(class_index), int(image_index), GENERATOR_VERSION])
    return np.random.Generator(np.random.PCG64(ss))


# --------------------------------------------------------------------------- renderer

# Part colours, fixed per attribute value (jittered +-12 per channel per image).
_PALE = (240, 236, 218)       # wing bars, pale tail tip, eye-ring
_DARK = (28, 24, 24)          # eye-stripe
_SPOT = (60, 38, 26)          # breast spots
_CROWN = (208, 34, 38)        # crown patch (body hues avoid red, see _nuisance)
_EYE = (8, 8, 10)
_BEAK_COLOURS = ((45, 40, 36), (222, 160, 45), (125, 115, 105), (232, 205, 130))
_PART_COLOURS = (_PALE, _DARK, _SPOT, _CROWN) + _BEAK_COLOURS


def _hsv(h: float, s: float, v: float) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _jitter(rng: np.random.Generator, c: Sequence[int], amount: int = 12) -> Tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(min(255, max(0, int(ci) + int(di)))) for ci, di in zip(c, d))


def _mix(a: Sequence[int], b: Sequence[int], t: float) -> Tuple[int, int, int]:
    return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))


def _ellipse(cx, cy, rx, ry, ang=0.0, n=40, t0=0.0, t1=2 * math.pi):
    ca, sa = math.cos(ang), math.sin(ang)
    pts = []
    for k in range(n):
        t = t0 + (t1 - t0) * k / (n - 1 if t1 - t0 < 2 * math.pi else n)
        x, y = rx * math.cos(t), ry * math.sin(t)
        pts.append((cx + ca * x - sa * y, cy + sa * x + ca * y))
    return pts


def _quad(p, q, w):
    """A stroke from p to q of width w, as a polygon."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    L = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / L * w / 2, dx / L * w / 2
    return [(p[0] + nx, p[1] + ny), (q[0] + nx, q[1] + ny), (q[0] - nx, q[1] - ny), (p[0] - nx, p[1] - ny)]


# Bird geometry, in bird units (1 unit = scale * frame width), x towards the head,
# y down, body centred at the origin.
_BODY = (0.0, 0.0, 0.25, 0.145)
_HEAD = (0.245, -0.125, 0.1)          # cx, cy, r
_EYE_POS = (0.275, -0.145)
_EYE_R = 0.021
_WING = (-0.05, -0.025, 0.2, 0.085, math.radians(8))   # cx, cy, rx, ry, angle
_TAIL_BASE = ((-0.17, -0.06), (-0.17, 0.05))
_TAIL_TIP = ((-0.45, -0.115), (-0.45, 0.005))
_LEGS = (((0.0, 0.12), (-0.02, 0.255)), ((0.07, 0.115), (0.06, 0.255)))
# Extreme points of every possible bird (longest beak, tail, feet, crown): a code-
# independent box used to place the bird, so placement never depends on the class.
_EXTENT = [(-0.46, -0.125), (-0.46, 0.01), (0.54, -0.13), (0.245, -0.23), (-0.05, 0.275),
           (0.1, 0.275), (0.25, 0.15), (-0.2, 0.15), (0.0, -0.16)]


class _Nuisance:
    """Every per-image random draw, made up front in a fixed order and number."""

    def __init__(self, rng: np.random.Generator):
        r = rng
        # pose
        self.angle = math.radians(float(r.uniform(-25.0, 25.0)))
        self.flip = bool(r.random() < 0.5)
        self.scale = float(r.uniform(0.62, 0.92))
        self.pos = (float(r.random()), float(r.random()))
        # bird colours: hue avoids the crown's red (+-0.07), so a red crown is always
        # visible; the same distribution for all classes.
        hue = 0.07 + 0.86 * float(r.random())
        sat = float(r.uniform(0.25, 0.8))
        val = float(r.uniform(0.42, 0.82))
        self.body = _hsv(hue, sat, val)
        self.head = _hsv(hue + float(r.uniform(-0.04, 0.04)), sat * float(r.uniform(0.8, 1.15)),
                         val * float(r.uniform(0.85, 1.1)))
        self.wing = _hsv(hue + float(r.uniform(-0.05, 0.05)), min(1.0, sat * 1.1),
                         val * float(r.uniform(0.5, 0.72)))
        self.belly = _mix(self.body, (238, 232, 215), float(r.uniform(0.3, 0.75)))
        self.belly_frac = float(r.uniform(0.35, 0.6))
        self.beak = _jitter(r, _BEAK_COLOURS[int(r.integers(len(_BEAK_COLOURS)))], 10)
        self.legs = _jitter(r, _BEAK_COLOURS[int(r.integers(len(_BEAK_COLOURS)))], 10)
        # part colours (jitter drawn whether or not the part is present)
        # part colours: fixed per attribute value, jittered, and blended towards the
        # colour they sit on by a per-image contrast (1 = full colour), so that on some
        # images the fine parts are faint
        contrast = float(r.uniform(0.8, 1.0))
        self.pale_bar = _mix(self.wing, _jitter(r, _PALE, 22), contrast)
        self.pale_tip = _mix(self.wing, _jitter(r, _PALE, 22), contrast)
        self.ring = _mix(self.head, _jitter(r, _PALE, 22), contrast)
        self.stripe = _mix(self.head, _jitter(r, _DARK, 18), contrast)
        self.spot = _mix(self.belly, _jitter(r, _SPOT, 18), contrast)
        self.crown = _mix(self.head, _jitter(r, _CROWN, 22), contrast)
        self.spots_uv = [(float(r.random()), float(r.random())) for _ in range(7)]
        self.n_spots = 5 + int(r.integers(3))
        self.beak_len = float(r.uniform(0.93, 1.07))
        # perch
        self.perch = bool(r.random() < 0.6)
        self.perch_angle = math.radians(float(r.uniform(-20, 20)))
        self.perch_col = _hsv(float(r.uniform(0.05, 0.12)), float(r.uniform(0.3, 0.7)), float(r.uniform(0.2, 0.5)))
        self.perch_w = float(r.uniform(0.025, 0.05))
        # background
        h0 = float(r.random())
        self.bg0 = _hsv(h0, float(r.uniform(0.05, 0.6)), float(r.uniform(0.3, 0.95)))
        self.bg1 = _hsv(h0 + float(r.uniform(-0.15, 0.15)), float(r.uniform(0.05, 0.6)), float(r.uniform(0.3, 0.95)))
        self.grad_angle = float(r.uniform(0, 2 * math.pi))
        self.blotch = r.normal(0.0, 1.0, size=(5, 5, 3))
        self.blotch_amp = float(r.uniform(8, 28))
        self.noise_sigma = float(r.uniform(2, 8))
        self.clutter = [self._distractor(r) for _ in range(int(r.integers(3, 9)))]
        self.noise_seed = int(r.integers(2 ** 31))

    @staticmethod
    def _distractor(r: np.random.Generator):
        kind = int(r.integers(7))   # leaf, twig, blob, triangle, stripe, dots, patch
        if r.random() < 0.3:
            col = _jitter(r, _PART_COLOURS[int(r.integers(len(_PART_COLOURS)))])
        else:
            col = _hsv(float(r.random()), float(r.uniform(0.1, 0.8)), float(r.uniform(0.15, 0.95)))
        return (kind, col, float(r.random()), float(r.random()), float(r.uniform(0, 2 * math.pi)),
                float(r.uniform(0.5, 1.5)), [(float(r.uniform(-1, 1)), float(r.uniform(-1, 1))) for _ in range(6)])


def _draw_distractor(d: ImageDraw.ImageDraw, item, S: float) -> None:
    kind, col, u, v, ang, size, jit = item
    cx, cy = u * S, v * S
    ca, sa = math.cos(ang), math.sin(ang)

    def rot(pts):
        return [(cx + ca * x - sa * y, cy + sa * x + ca * y) for x, y in pts]

    if kind == 0:    # leaf
        L = 0.09 * S * size
        d.polygon(rot(_ellipse(0, 0, L, L * 0.35, n=24)), fill=col)
    elif kind == 1:  # twig
        L = 0.25 * S * size
        d.line(rot([(-L, 0), (0, L * 0.15 * jit[0][0]), (L, L * 0.2 * jit[0][1])]),
               fill=col, width=max(1, int(0.012 * S * size)))
    elif kind == 2:  # blob
        R = 0.06 * S * size
        pts = [(R * (1 + 0.3 * jx) * math.cos(2 * math.pi * k / 6),
                R * (1 + 0.3 * jy) * math.sin(2 * math.pi * k / 6)) for k, (jx, jy) in enumerate(jit)]
        d.polygon(rot(pts), fill=col)
    elif kind == 3:  # small beak-like triangle
        L = 0.07 * S * size
        d.polygon(rot([(0, -L * 0.3), (L * (1 + 0.5 * jit[0][0]), 0), (0, L * 0.3)]), fill=col)
    elif kind == 4:  # bar-like stripe
        L, w = 0.08 * S * size, 0.025 * S
        d.polygon(rot(_quad((-L, 0), (L, 0), w)), fill=col)
    elif kind == 5:  # spot cluster
        R = 0.02 * S
        for jx, jy in jit[:5]:
            x, y = rot([(jx * 0.06 * S * size, jy * 0.06 * S * size)])[0]
            d.ellipse([x - R, y - R, x + R, y + R], fill=col)
    else:            # patch (crown-like chord)
        R = 0.09 * S * size
        d.polygon(rot(_ellipse(0, 0, R, R, t0=math.pi, t1=2 * math.pi, n=16)), fill=col)


def _background(nz: _Nuisance, S: int) -> Image.Image:
    """Colour gradient + low-frequency blotches: smooth, so built on a coarse grid and
    up-sampled (bicubic) to the S x S canvas."""
    G = 24
    yy, xx = np.mgrid[0:G, 0:G].astype(np.float32) / (G - 1)
    t = (xx - 0.5) * math.cos(nz.grad_angle) + (yy - 0.5) * math.sin(nz.grad_angle) + 0.5
    t = np.clip(t, 0.0, 1.0)[..., None]
    img = (1 - t) * np.asarray(nz.bg0, np.float32) + t * np.asarray(nz.bg1, np.float32)
    blotch = Image.fromarray(
        np.clip(nz.blotch * 40 + 128, 0, 255).astype(np.uint8), "RGB").resize((G, G), Image.BICUBIC)
    img += (np.asarray(blotch, np.float32) - 128.0) / 40.0 * nz.blotch_amp
    small = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
    return small.resize((S, S), Image.BICUBIC)


def render_sample(class_code: Sequence[int], rng: np.random.Generator, image_size: int = 96,
                  *, supersample: int = _SUPERSAMPLE) -> Image.Image:
    """Render one image (RGB, ``image_size`` square) of the class ``class_code``.

    All random draws come from ``rng`` and are made before, and independently of, the
    class code: two codes rendered from identically seeded generators give the same
    pose, colours and background and differ only at the parts whose attributes differ.
    """
    code = tuple(int(c) for c in class_code)
    if len(code) != len(_SIZES) or any(not 0 <= c < n for c, n in zip(code, _SIZES)):
        raise ValueError(f"class_code must have {len(_SIZES)} entries with ranges {_SIZES}, got {class_code}")
    beak, eye, bars, tail, crown, breast = code
    nz = _Nuisance(rng)
    noise = np.random.Generator(np.random.PCG64(nz.noise_seed)).normal(
        0.0, nz.noise_sigma, size=(image_size, image_size, 3)).astype(np.float32)

    S = int(image_size) * int(supersample)
    img = _background(nz, S)
    d = ImageDraw.Draw(img)
    for item in nz.clutter:
        _draw_distractor(d, item, S)

    # pose: local (x, y) -> frame pixels
    unit = nz.scale * S
    fx = -1.0 if nz.flip else 1.0
    ca, sa = math.cos(nz.angle), math.sin(nz.angle)

    def place(pts, ox=0.0, oy=0.0):
        out = []
        for x, y in pts:
            x *= fx
            out.append((ox + unit * (ca * x - sa * y), oy + unit * (sa * x + ca * y)))
        return out

    ext = place(_EXTENT)
    xs, ys = [p[0] for p in ext], [p[1] for p in ext]
    m = 0.02 * S
    lo_x, hi_x = m - min(xs), S - m - max(xs)
    lo_y, hi_y = m - min(ys), S - m - max(ys)
    ox = lo_x + nz.pos[0] * (hi_x - lo_x) if hi_x > lo_x else (lo_x + hi_x) / 2
    oy = lo_y + nz.pos[1] * (hi_y - lo_y) if hi_y > lo_y else (lo_y + hi_y) / 2

    def P(pts):
        return place(pts, ox, oy)

    def W(w):  # a width in bird units -> pixels
        return max(1, int(round(w * unit)))

    # perch under the feet
    if nz.perch:
        (fx0, fy0), = P([(0.03, 0.255)])
        pa = nz.angle + nz.perch_angle
        L = 2.0 * S
        d.line([(fx0 - L * math.cos(pa), fy0 - L * math.sin(pa)), (fx0 + L * math.cos(pa), fy0 + L * math.sin(pa))],
               fill=nz.perch_col, width=W(nz.perch_w))
    # legs
    for a, b in _LEGS:
        d.polygon(P(_quad(a, b, 0.022)), fill=nz.legs)
        d.polygon(P(_quad((b[0] - 0.035, b[1]), (b[0] + 0.04, b[1]), 0.018)), fill=nz.legs)
    # tail (behind the body)
    (b0, b1), (t0, t1) = _TAIL_BASE, _TAIL_TIP
    d.polygon(P([b0, t0, t1, b1]), fill=nz.wing)
    if tail == 1:   # pale tip: the last ~28% of the tail
        f = 0.72
        m0 = (b0[0] + f * (t0[0] - b0[0]), b0[1] + f * (t0[1] - b0[1]))
        m1 = (b1[0] + f * (t1[0] - b1[0]), b1[1] + f * (t1[1] - b1[1]))
        d.polygon(P([m0, t0, t1, m1]), fill=nz.pale_tip)
    elif tail == 2:  # forked: a deep V notch cut into the end, showing the background
        notch = ((t0[0] + t1[0]) / 2 + 0.11, (t0[1] + t1[1]) / 2)
        ex = 0.03  # the prongs flare a little beyond the plain tail's corners
        p0, p1 = (t0[0] - ex, t0[1] - ex * 0.6), (t1[0] - ex, t1[1] + ex * 0.6)
        d.polygon(P([b0, p0, notch, p1, b1]), fill=nz.wing)
    # body, belly
    bx, by, brx, bry = _BODY
    d.polygon(P(_ellipse(bx, by, brx, bry, n=56)), fill=nz.body)
    # belly: the lower part of the body ellipse, below y = bry*(1 - 2*belly_frac)
    yc = bry * (1 - 2 * nz.belly_frac)
    tc = math.asin(max(-1.0, min(1.0, yc / bry)))
    d.polygon(P(_ellipse(bx, by, brx * 0.98, bry * 0.98, t0=tc, t1=math.pi - tc, n=32)), fill=nz.belly)
    # wing and wing bars
    wcx, wcy, wrx, wry, wang = _WING
    d.polygon(P(_ellipse(wcx, wcy, wrx, wry, wang, n=48)), fill=nz.wing)
    bar_pos = {0: (), 1: (0.05,), 2: (-0.035, 0.075)}[bars]
    bw = 0.032
    for u in bar_pos:   # u: position along the wing axis (towards the head)
        pts = []
        for uu in (u - bw / 2, u + bw / 2):
            hh = wry * math.sqrt(max(0.0, 1 - (uu / wrx) ** 2)) * 0.92
            pts.append((uu, -hh))
            pts.append((uu, hh))
        quad = [pts[0], pts[2], pts[3], pts[1]]
        cw, sw = math.cos(wang), math.sin(wang)
        quad = [(wcx + cw * x - sw * y, wcy + sw * x + cw * y) for x, y in quad]
        d.polygon(P(quad), fill=nz.pale_bar)
    if breast == 1:  # dark spots on the breast, below the wing and in front of the legs
        for u, v in nz.spots_uv[:nz.n_spots]:
            sx = 0.085 + 0.13 * u
            lim = bry * math.sqrt(max(0.0, 1 - (sx / brx) ** 2)) - 0.025
            sy = 0.035 + v * max(0.0, lim - 0.035)
            d.polygon(P(_ellipse(sx, sy, 0.02, 0.02, n=12)), fill=nz.spot)
    # head, crown
    hx, hy, hr = _HEAD
    d.polygon(P(_ellipse(hx, hy, hr, hr, n=40)), fill=nz.head)
    if crown == 1:
        d.polygon(P(_ellipse(hx, hy, hr, hr, t0=math.radians(200), t1=math.radians(330), n=20)), fill=nz.crown)
    # beak, from the front of the head
    bxs, bys = hx + hr * 0.9, hy + 0.01
    k = nz.beak_len
    if beak == 0:    # short, deep cone
        pts = [(bxs - 0.01, bys - 0.04), (bxs + 0.065 * k, bys + 0.003), (bxs - 0.01, bys + 0.04)]
    elif beak == 1:  # long, thin needle
        pts = [(bxs - 0.01, bys - 0.016), (bxs + 0.19 * k, bys + 0.008), (bxs - 0.01, bys + 0.016)]
    else:            # hooked: upper mandible curving down over the tip
        L = 0.11 * k
        top = [(bxs - 0.01, bys - 0.032)] + [
            (bxs + L * t, bys - 0.032 + 0.02 * math.sin(math.pi * t) * 1.0 + 0.075 * t ** 3) for t in (0.3, 0.55, 0.8, 0.95)]
        tip = [(bxs + L * 1.0, bys + 0.055), (bxs + L * 0.85, bys + 0.045)]
        bottom = [(bxs + L * 0.6, bys + 0.018), (bxs - 0.01, bys + 0.026)]
        pts = top + tip + bottom
    d.polygon(P(pts), fill=nz.beak)
    # eye markings, then the eye
    ex, ey = _EYE_POS
    if eye == 1:
        d.polygon(P(_ellipse(ex, ey, 0.046, 0.046, n=24)), fill=nz.ring)
    elif eye == 2:
        d.polygon(P(_quad((hx - 0.085, ey - 0.012), (bxs + 0.005, ey + 0.006), 0.03)), fill=nz.stripe)
    d.polygon(P(_ellipse(ex, ey, _EYE_R, _EYE_R, n=16)), fill=_EYE)

    out = img.resize((image_size, image_size), Image.LANCZOS)
    arr = np.asarray(out, np.float32) + noise
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- generation

def _encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=_JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def generate_dataset(spec: SyntheticSpec, root: _PathLike) -> pathlib.Path:
    """Render ``spec`` into ``root`` (created; must not hold another dataset). Not atomic:
    use :func:`ensure_default_dataset`, which calls this on a temporary folder."""
    root = pathlib.Path(root)
    codes = class_codes(spec)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, labels, split, classes = [], [], [], []
    per_class = spec.train_per_class + spec.test_per_class
    img_id = 0
    for ci, code in enumerate(codes):
        name = class_name(code)
        folder = f"{ci + 1:03d}.{name}"
        classes.append(f"{ci + 1} {folder}")
        (root / "images" / folder).mkdir(exist_ok=True)
        for k in range(per_class):
            img_id += 1
            rel = f"{folder}/{name}_{k + 1:04d}.jpg"
            img = render_sample(code, sample_rng(spec.seed, ci, k), spec.image_size)
            with open(root / "images" / rel, "wb") as f:
                f.write(_encode_jpeg(img))
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {ci + 1}")
            split.append(f"{img_id} {1 if k < spec.train_per_class else 0}")
    for fname, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                         ("train_test_split.txt", split), ("classes.txt", classes)):
        with open(root / fname, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    rec = _spec_record(spec)
    rec["attributes"] = [[a, list(v)] for a, v in ATTRIBUTES]
    rec["class_codes"] = [list(c) for c in codes]
    with open(root / "spec.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
        f.write("\n")
    return root


_TMP_MARK = ".tmp-"


def _cleanup_stale_temps(final: pathlib.Path, max_age_s: float = 24 * 3600) -> None:
    """Remove temp folders of this dataset left by a crashed generator: those of a dead
    process on this host, or older than a day. Best effort."""
    host = socket.gethostname()
    prefix = "." + final.name + _TMP_MARK
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return
    now = time.time()
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        stale = False
        try:
            parts = p.name[len(prefix):].split("-")  # host-pid-uuid (host may contain '-')
            pid = int(parts[-2])
            p_host = "-".join(parts[:-2])
            if p_host == host and pid != os.getpid():
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    stale = True
                except OSError:
                    pass
            if now - p.stat().st_mtime > max_age_s:
                stale = True
        except (ValueError, IndexError, OSError):
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)


def ensure_default_dataset(spec: SyntheticSpec = SyntheticSpec(), cache_dir: Optional[_PathLike] = None,
                           *, verbose: bool = True) -> pathlib.Path:
    """Return the CUB-layout root of ``spec``'s dataset, generating it first if needed.

    Generation writes into a temporary sibling folder and ``os.rename``s it into place,
    so a crash never leaves a half dataset under the final name, and concurrent callers
    are safe: the loser of the rename race discards its copy and uses the winner's.
    """
    final = dataset_dir(spec, cache_dir)
    if is_complete(final, spec):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_stale_temps(final)
    if final.exists():
        # Not complete but present: not made by this code (renames are atomic), e.g. a
        # user deleted files. Move it aside so the rename below can succeed.
        aside = final.parent / f".{final.name}.broken-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        except OSError:
            pass
        if is_complete(final, spec):
            return final
    tmp = final.parent / f".{final.name}{_TMP_MARK}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    if verbose:
        n = spec.num_classes * (spec.train_per_class + spec.test_per_class)
        print(f"[tdsa_fast] generating the synthetic default dataset ({spec.num_classes} classes, "
              f"{n} images of {spec.image_size}px) in {final} ...", file=sys.stderr, flush=True)
    try:
        generate_dataset(spec, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if is_complete(final, spec):   # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(f"[tdsa_fast] done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return final
