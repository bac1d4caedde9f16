"""Clean images per label for each kind of task (lift_ext.vision.tasks): glyphs of a font,
sklearn's handwritten digits, structured scenes (dSprites / CLEVR in spirit) and textures.
Each function takes the labels [N] (ints) and a numpy Generator and returns float32 images
[N, 32, 32] in [0, 1], foreground bright, before the task's style (images.finish)."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from lift_ext.vision import images as im

# attribute -> number of classes, for the scene and texture tasks
SCENE_CLASSES = {"shape": 4, "xpos": 4, "orientation": 4, "count": 5, "distance": 4,
                 "ypos": 4, "size": 3, "brightness": 3}
TEXTURE_CLASSES = {"orientation": 6, "frequency": 4, "scale": 4, "pattern": 4, "contrast": 4, "luminance": 3}
SHAPES4 = ("square", "circle", "triangle", "cross")


def glyphs(labels: np.ndarray, chars: str, fonts: tuple, rng: np.random.Generator) -> torch.Tensor:
    """Character ``chars[label]`` in a font drawn uniformly from ``fonts`` (bundled font files),
    about 70 % of the canvas, under affine jitter (images.place)."""
    which = rng.integers(len(fonts), size=len(labels))
    canvases = torch.stack([im.centred(im.glyph_bitmap(fonts[f], chars[c]), fill=0.7)
                            for c, f in zip(labels, which)])
    return im.place(canvases, rng)


@lru_cache(maxsize=1)
def _sklearn_digits():
    from sklearn.datasets import load_digits
    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target


def digits(labels: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """sklearn's 8x8 handwritten digits of the given classes, upsampled to 80 % of the canvas
    (bilinear) under affine jitter; each image drawn without replacement within its class
    while the class has unused images."""
    pictures, targets = _sklearn_digits()
    chosen = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        slots = np.nonzero(labels == c)[0]
        members = rng.permutation(np.nonzero(targets == c)[0])
        chosen[slots] = np.resize(members, len(slots))
    canvases = torch.stack([im.centred(pictures[i], fill=0.8) for i in chosen])
    return im.place(canvases, rng, rotate=8.0)


def _spread(count: int, size: float, gap: float, rng: np.random.Generator) -> list:
    """``count`` centres (x, y) px at least ``gap`` px apart, inside the canvas by ``size``."""
    for _ in range(1_000):
        points = rng.uniform(size + 1, im.SIZE - size - 1, (count, 2))
        d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)) + np.eye(count) * 1e9
        if d.min() >= gap:
            return points.tolist()
    raise RuntimeError(f"cannot place {count} objects {gap} px apart")


def _scene(attribute: str, label: int, rng: np.random.Generator) -> torch.Tensor:
    """One scene whose ``attribute`` has class ``label`` (module docstring)."""
    shape = SHAPES4[rng.integers(4)]
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(10, 22, 2)
    if attribute == "shape":
        return im.shape_mask(SHAPES4[label], cx, cy, rng.uniform(4.5, 7.0), angle)
    if attribute == "xpos":
        return im.shape_mask(shape, 5.5 + 5.5 * label + rng.uniform(0, 4), rng.uniform(7, 25), rng.uniform(3, 4.5), angle)
    if attribute == "ypos":
        return im.shape_mask(shape, rng.uniform(7, 25), 5.5 + 5.5 * label + rng.uniform(0, 4), rng.uniform(3, 4.5), angle)
    if attribute == "orientation":
        tilt = label * math.pi / 4 + rng.uniform(-0.17, 0.17)
        return im.shape_mask("bar", cx, cy, rng.uniform(5, 7), tilt)
    if attribute == "size":
        return im.shape_mask(shape, cx, cy, (2.5, 4.5, 6.5)[label] + rng.uniform(0, 1.5), angle)
    if attribute == "brightness":
        return (0.3, 0.6, 0.95)[label] * im.shape_mask(shape, cx, cy, rng.uniform(4, 7), angle)
    if attribute == "count":
        out = torch.zeros(im.SIZE, im.SIZE)
        for x, y in _spread(label + 1, 3.0, 7.5, rng):
            out = torch.maximum(out, im.shape_mask(SHAPES4[rng.integers(4)], x, y, rng.uniform(2.2, 3.0),
                                                   rng.uniform(0, 2 * math.pi)))
        return out
    if attribute == "distance":
        dist = (5.5, 9.5, 13.5, 17.5)[label] + rng.uniform(0, 3.5)
        direction = rng.uniform(0, 2 * math.pi)
        half = np.array([math.cos(direction), math.sin(direction)]) * dist / 2
        mid = rng.uniform(4 + abs(half), im.SIZE - 4 - abs(half))
        a, b = mid - half, mid + half
        return torch.maximum(im.shape_mask("circle", a[0], a[1], 2.5, 0.0), im.shape_mask("square", b[0], b[1], 2.5, angle))
    raise ValueError(f"scene attribute must be one of {sorted(SCENE_CLASSES)}, got {attribute!r}")


def scenes(labels: np.ndarray, attribute: str, rng: np.random.Generator) -> torch.Tensor:
    """Rendered scenes whose ``attribute`` (a key of SCENE_CLASSES) is the label; every other
    property (shape, position, size, angle) is drawn at random."""
    return torch.stack([_scene(attribute, int(c), rng) for c in labels])


def textures(labels: np.ndarray, attribute: str, rng: np.random.Generator) -> torch.Tensor:
    """Textures whose ``attribute`` (a key of TEXTURE_CLASSES) is the label: grating
    orientation (6 bins of 30 degrees), grating frequency (about 2, 3.5, 5.5, 8 cycles per
    image), noise scale (blur 0.6, 1.2, 2.4, 4.8 px), pattern (grating, plaid, checkerboard,
    dots), contrast (0.15 to 0.9), mean luminance (0.3, 0.5, 0.7)."""
    n = len(labels)
    lab = np.asarray(labels)
    theta, cycles, phase = rng.uniform(0, math.pi, n), rng.uniform(3, 6, n), rng.uniform(0, 2 * math.pi, n)
    if attribute == "orientation":
        return im.grating(lab * math.pi / 6 + rng.uniform(-0.12, 0.12, n), cycles, phase)
    if attribute == "frequency":
        return im.grating(theta, np.array([2.0, 3.5, 5.5, 8.0])[lab] * rng.uniform(0.92, 1.08, n), phase)
    if attribute == "scale":
        return im.blurred_noise(np.array([0.6, 1.2, 2.4, 4.8])[lab] * rng.uniform(0.87, 1.15, n), rng)
    if attribute == "pattern":
        a = im.grating(theta, cycles, phase)
        b = im.grating(theta + math.pi / 2, cycles, phase)
        product = (2 * a - 1) * (2 * b - 1)
        options = torch.stack([a, 0.5 * (a + b), (product > 0).float(), (product > 0.5).float()])
        return options[torch.as_tensor(lab), torch.arange(n)]
    if attribute == "contrast":
        c = torch.tensor(np.array([0.15, 0.35, 0.6, 0.9])[lab], dtype=torch.float32)[:, None, None]
        return 0.5 + c * (im.grating(theta, cycles, phase) - 0.5)
    if attribute == "luminance":
        mean = torch.tensor(np.array([0.3, 0.5, 0.7])[lab], dtype=torch.float32)[:, None, None]
        return mean + 0.5 * (im.blurred_noise(rng.uniform(0.8, 3.0, n), rng) - 0.5)
    raise ValueError(f"texture attribute must be one of {sorted(TEXTURE_CLASSES)}, got {attribute!r}")
