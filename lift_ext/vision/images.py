"""Drawing primitives of the vision suite, all on 32x32 grayscale images with values in [0, 1]
(float32 tensors [N, 32, 32]) and every random draw from a numpy Generator passed in.

    glyph_bitmap   one character of a font file rendered by matplotlib's FreeType binding
    place          a batch of bitmaps put on the canvas under random affine jitter
    shape_mask     a filled shape (square, circle, triangle, cross, bar) at a position, size, angle
    grating        sinusoidal gratings of given orientations, frequencies and phases
    blurred_noise  Gaussian noise low-passed at given scales
    finish         a style applied to clean images: contrast, polarity, noise, clutter
"""
from __future__ import annotations

import math
import os
from functools import lru_cache

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.ft2font import FT2Font

SIZE = 32
FONT_DIR = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
STYLES = ("clean", "noisy", "inverted", "clutter", "lowcontrast", "window")


def font_path(name: str) -> str:
    """The path of a font file bundled with matplotlib, e.g. "DejaVuSans.ttf"."""
    path = os.path.join(FONT_DIR, name)
    if not os.path.exists(path):
        raise ValueError(f"font {name!r} is not among matplotlib's bundled fonts in {FONT_DIR}")
    return path


@lru_cache(maxsize=None)
def glyph_bitmap(font: str, char: str, pixels: int = 22) -> np.ndarray:
    """``char`` of the bundled ``font`` as a float32 bitmap in [0, 1], its height about
    ``pixels`` px (font size in points at 72 dpi), cropped to its ink. ValueError when the font
    has no glyph for the character."""
    ft = FT2Font(font_path(font))
    if ft.get_char_index(ord(char)) == 0:
        raise ValueError(f"font {font!r} has no glyph for {char!r}")
    ft.set_size(pixels, 72)
    ft.set_text(char)
    ft.draw_glyphs_to_bitmap()
    bitmap = np.asarray(ft.get_image(), dtype=np.float32) / 255.0
    rows, cols = np.nonzero(bitmap > 0.05)
    return bitmap[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def centred(bitmap: np.ndarray, fill: float = 0.8) -> torch.Tensor:
    """``bitmap`` scaled (aspect kept) so its longer side is ``fill`` of the canvas, centred on a
    32x32 canvas [32, 32]."""
    h, w = bitmap.shape
    scale = fill * SIZE / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(torch.from_numpy(np.ascontiguousarray(bitmap))[None, None], size=(nh, nw),
                          mode="bilinear", align_corners=False)[0, 0]
    canvas = torch.zeros(SIZE, SIZE)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    canvas[top:top + nh, left:left + nw] = small
    return canvas


def place(canvases: torch.Tensor, rng: np.random.Generator, *, rotate: float = 12.0, scale=(0.8, 1.05),
          shift: float = 0.12, shear: float = 0.15) -> torch.Tensor:
    """Random affine jitter of each image [N, 32, 32]: rotation up to ``rotate`` degrees, scale
    in ``scale``, shear up to ``shear``, shift up to ``shift`` of the half-width."""
    n = canvases.shape[0]
    angle = np.radians(rng.uniform(-rotate, rotate, n))
    s = rng.uniform(*scale, n)
    sh = rng.uniform(-shear, shear, n)
    tx, ty = rng.uniform(-shift, shift, (2, n))
    cos, sin = np.cos(angle) / s, np.sin(angle) / s
    theta = np.stack([np.stack([cos, -sin + sh, tx], 1), np.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(torch.tensor(theta, dtype=torch.float32), (n, 1, SIZE, SIZE), align_corners=False)
    return F.grid_sample(canvases[:, None], grid, align_corners=False)[:, 0]


def _coords() -> torch.Tensor:
    """Pixel centres [2, 32, 32] (x, y) in pixels."""
    r = torch.arange(SIZE, dtype=torch.float32) + 0.5
    return torch.stack(torch.meshgrid(r, r, indexing="xy"))


SHAPES = ("square", "circle", "triangle", "cross", "bar")


def shape_mask(shape: str, cx: float, cy: float, size: float, angle: float) -> torch.Tensor:
    """A filled ``shape`` (one of SHAPES) centred at (cx, cy) px, half-size ``size`` px, rotated
    by ``angle`` radians, anti-aliased by one pixel [32, 32] in [0, 1]."""
    x, y = _coords()
    dx, dy = x - cx, y - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if shape == "square":
        d = torch.maximum(u.abs(), v.abs()) - 0.85 * size
    elif shape == "circle":
        d = torch.sqrt(u * u + v * v) - size
    elif shape == "triangle":
        edges = [(u * math.cos(a) + v * math.sin(a)) for a in (math.pi / 2, math.pi / 2 + 2.094, math.pi / 2 - 2.094)]
        d = torch.stack(edges).max(0).values - 0.55 * size
    elif shape == "cross":
        arm = torch.maximum(u.abs() - size, v.abs() - 0.3 * size)
        d = torch.minimum(arm, torch.maximum(v.abs() - size, u.abs() - 0.3 * size))
    elif shape == "bar":
        d = torch.maximum(u.abs() - 1.3 * size, v.abs() - 0.3 * size)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    return (0.5 - d).clamp(0.0, 1.0)


def grating(orientation: np.ndarray, cycles: np.ndarray, phase: np.ndarray) -> torch.Tensor:
    """Sinusoidal gratings [N, 32, 32] in [0, 1]: ``orientation`` radians, ``cycles`` per image
    width, ``phase`` radians (arrays of length N)."""
    x, y = _coords() / SIZE
    o = torch.tensor(orientation, dtype=torch.float32)[:, None, None]
    k = torch.tensor(cycles, dtype=torch.float32)[:, None, None] * 2 * math.pi
    p = torch.tensor(phase, dtype=torch.float32)[:, None, None]
    return 0.5 + 0.5 * torch.sin(k * (x * torch.cos(o) + y * torch.sin(o)) + p)


def blurred_noise(scales: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """White Gaussian noise low-passed by a Gaussian of std ``scales`` px (one per image),
    rescaled to mean 0.5 and std 0.2 [N, 32, 32]."""
    n = len(scales)
    noise = torch.tensor(rng.standard_normal((n, SIZE, SIZE)), dtype=torch.float32)
    f = torch.fft.fftfreq(SIZE)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    s = torch.tensor(scales, dtype=torch.float32)[:, None, None]
    out = torch.fft.ifft2(torch.fft.fft2(noise) * torch.exp(-2 * math.pi ** 2 * s ** 2 * f2)).real
    out = (out - out.mean((1, 2), keepdim=True)) / out.std((1, 2), keepdim=True).clamp_min(1e-6)
    return (0.5 + 0.2 * out).clamp(0.0, 1.0)


def finish(images: torch.Tensor, style: str, rng: np.random.Generator) -> torch.Tensor:
    """Apply ``style`` (one of STYLES) to clean images [N, 32, 32] in [0, 1] (foreground bright):
    "clean" a little noise; "noisy" a random grey background and strong noise; "inverted" dark
    on light; "clutter" random thin lines; "lowcontrast" contrast 0.35; "window" a Gaussian
    aperture. Returns [N, 32, 32] clamped to [0, 1]."""
    n = images.shape[0]
    noise = torch.tensor(rng.standard_normal(images.shape), dtype=torch.float32)
    if style == "clean":
        out = images + 0.03 * noise
    elif style == "noisy":
        bg = torch.tensor(rng.uniform(0.1, 0.4, (n, 1, 1)), dtype=torch.float32)
        out = bg + (1 - bg) * images + 0.18 * noise
    elif style == "inverted":
        out = 1.0 - 0.9 * images + 0.03 * noise
    elif style == "clutter":
        lines = grating(rng.uniform(0, math.pi, n), rng.uniform(1.5, 3.0, n), rng.uniform(0, 2 * math.pi, n))
        out = torch.maximum(images, 0.45 * (lines > 0.97).float()) + 0.03 * noise
    elif style == "lowcontrast":
        out = 0.35 + 0.35 * images + 0.03 * noise
    elif style == "window":
        x, y = _coords()
        r2 = ((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) / (SIZE / 4) ** 2
        out = 0.5 + (images - 0.5) * torch.exp(-r2 / 2) + 0.03 * noise
    else:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return out.clamp(0.0, 1.0)
