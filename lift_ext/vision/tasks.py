"""The vision suite's tasks: 48 image-classification tasks in 3 groups of 16, rendered offline
and deterministically from a seed, and the disjoint upstream set the backbone is pre-trained on.

    natural     glyphs of several scripts (Latin, Greek, Cyrillic letters, digits) in
                matplotlib's bundled fonts (DejaVu Sans / Serif / Mono, STIX), and sklearn's
                handwritten digits; label = which character
    structured  rendered scenes (dSprites / CLEVR in spirit); label = shape, x-position bin,
                orientation bin, object count or distance bin between two objects
    texture     gratings and noise textures; label = orientation, frequency, noise scale or
                pattern type

Tasks of a group share their kind of image and, in pairs or triples, their label semantics (the
same characters in other fonts, the same attribute under another style); groups differ in both.
Each task has TASK_SIZE = 1,000 labelled 32x32 grayscale images (uint8 0-255), classes balanced;
its support pool is the first SUPPORT_POOL = 800, its query set the held-out last 200.

The upstream set (UPSTREAM_SPECS) uses characters and scene / texture attributes that no
benchmark task uses (other letters, y-position, object size and brightness, contrast and mean
luminance) and bold / italic font variants; its images are drawn from other seeds.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lift_ext.shakespeare.cache import cache_dir
from lift_ext.vision import images as im
from lift_ext.vision import render

TASK_SIZE = 1_000
SUPPORT_POOL = 800
UPSTREAM_SIZE = 2_000
GROUPS = ("natural", "structured", "texture")
SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 8, "val": 3, "test": 5}  # tasks per group
FORMAT = 1


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``kind`` "glyphs" (``attribute`` = its characters, one class each, drawn in
    ``fonts``), "digits" (sklearn's, ``attribute`` = the digit characters), "scene" or "texture"
    (``attribute`` = the labelled property, render.SCENE_CLASSES / TEXTURE_CLASSES); each image
    gets one of ``styles`` (images.STYLES) at random."""
    name: str
    group: str
    kind: str
    attribute: str
    fonts: Tuple[str, ...] = ()
    styles: Tuple[str, ...] = ("clean",)

    @property
    def num_classes(self) -> int:
        if self.kind in ("glyphs", "digits"):
            return len(self.attribute)
        table = render.SCENE_CLASSES if self.kind == "scene" else render.TEXTURE_CLASSES
        return table[self.attribute]

    @property
    def label_set(self) -> Tuple[str, ...]:
        """What the labels name: the characters, or "<kind>:<attribute>=<class>"."""
        if self.kind in ("glyphs", "digits"):
            return tuple(self.attribute)
        return tuple(f"{self.kind}:{self.attribute}={c}" for c in range(self.num_classes))


def _glyph(name, chars, font, style="clean"):
    return TaskSpec(name, "natural", "glyphs", chars, (font,), (style,))


LATIN, GREEK, GREEK_UPPER, CYRILLIC, DIGITS = "ABDEGHKM", "αβγδεζηθ", "ΓΔΘΛΞΠΣΦ", "БГДЖЗИЛФ", "0123456789"

TASK_SPECS: Tuple[TaskSpec, ...] = (
    TaskSpec("digits-sklearn", "natural", "digits", DIGITS),
    _glyph("digits-sans", DIGITS, "DejaVuSans.ttf"),
    _glyph("digits-serif-noisy", DIGITS, "DejaVuSerif.ttf", "noisy"),
    _glyph("digits-stix", DIGITS, "STIXGeneral.ttf"),
    _glyph("latin-sans", LATIN, "DejaVuSans.ttf"),
    _glyph("latin-serif", LATIN, "DejaVuSerif.ttf"),
    _glyph("latin-mono-inverted", LATIN, "DejaVuSansMono.ttf", "inverted"),
    _glyph("greek-sans", GREEK, "DejaVuSans.ttf"),
    _glyph("greek-stix-inverted", GREEK, "STIXGeneral.ttf", "inverted"),
    _glyph("greek-upper-serif", GREEK_UPPER, "DejaVuSerif.ttf"),
    _glyph("cyrillic-sans", CYRILLIC, "DejaVuSans.ttf"),
    _glyph("cyrillic-stix-clutter", CYRILLIC, "STIXGeneral.ttf", "clutter"),
    _glyph("digits-mono", DIGITS, "DejaVuSansMono.ttf"),
    _glyph("latin-stix-noisy", LATIN, "STIXGeneral.ttf", "noisy"),
    _glyph("greek-serif-lowcontrast", GREEK, "DejaVuSerif.ttf", "lowcontrast"),
    _glyph("cyrillic-serif-window", CYRILLIC, "DejaVuSerif.ttf", "window"),
    *(TaskSpec(f"scene-{a}-{s}", "structured", "scene", a, (), (s,)) for a, s in (
        ("shape", "clean"), ("shape", "noisy"), ("shape", "inverted"), ("shape", "lowcontrast"),
        ("orientation", "clean"), ("orientation", "noisy"), ("orientation", "inverted"),
        ("count", "clean"), ("count", "noisy"), ("count", "inverted"),
        ("distance", "clean"), ("distance", "noisy"), ("distance", "inverted"),
        ("xpos", "clean"), ("xpos", "inverted"), ("xpos", "noisy"))),
    *(TaskSpec(f"texture-{a}-{s}", "texture", "texture", a, (), (s,)) for a, s in (
        ("orientation", "clean"), ("orientation", "noisy"), ("orientation", "window"), ("orientation", "inverted"),
        ("frequency", "clean"), ("frequency", "noisy"), ("frequency", "window"), ("frequency", "lowcontrast"),
        ("scale", "clean"), ("scale", "noisy"), ("scale", "lowcontrast"), ("scale", "window"),
        ("pattern", "clean"), ("pattern", "noisy"), ("pattern", "window"), ("pattern", "inverted"))),
)

UPSTREAM_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono-Bold.ttf", "STIXGeneralBol.ttf",
                  "DejaVuSans-Oblique.ttf")
UPSTREAM_STYLES = ("clean", "noisy", "inverted", "lowcontrast")
UPSTREAM_SPECS: Tuple[TaskSpec, ...] = (
    TaskSpec("up-latin-lower", "natural", "glyphs", "cefhkmnrst", UPSTREAM_FONTS, UPSTREAM_STYLES),
    TaskSpec("up-latin-upper", "natural", "glyphs", "CFJNPRTUVW", UPSTREAM_FONTS, UPSTREAM_STYLES),
    TaskSpec("up-greek-lower", "natural", "glyphs", "λμξπρσφψω", UPSTREAM_FONTS, UPSTREAM_STYLES),
    TaskSpec("up-cyrillic", "natural", "glyphs", "ЮЯШЩЬЫЭЙЦ", UPSTREAM_FONTS, UPSTREAM_STYLES),
    TaskSpec("up-scene-ypos", "structured", "scene", "ypos", (), UPSTREAM_STYLES),
    TaskSpec("up-scene-size", "structured", "scene", "size", (), UPSTREAM_STYLES),
    TaskSpec("up-scene-brightness", "structured", "scene", "brightness", (), ("clean", "noisy")),
    TaskSpec("up-texture-contrast", "texture", "texture", "contrast", (), ("clean", "noisy")),
    TaskSpec("up-texture-luminance", "texture", "texture", "luminance", (), ("clean", "noisy")),
)

MAX_CLASSES = max(s.num_classes for s in TASK_SPECS)


@dataclass
class VisionTask:
    """One task's data: ``images`` uint8 [n, 32, 32] (0-255), ``labels`` int64 [n] in
    [0, spec.num_classes)."""
    spec: TaskSpec
    images: torch.Tensor
    labels: torch.Tensor

    @property
    def support_pool(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.images[:SUPPORT_POOL], self.labels[:SUPPORT_POOL]

    @property
    def query(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.images[SUPPORT_POOL:], self.labels[SUPPORT_POOL:]


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def generate(spec: TaskSpec, seed: int, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [n, 32, 32], labels int64 [n]) of ``spec``, a function of (spec, seed, n):
    balanced labels in random order, each image rendered clean (lift_ext.vision.render) and
    then given one of the spec's styles."""
    rng = _rng(seed, spec.name)
    labels = rng.permutation(np.arange(n) % spec.num_classes)
    if spec.kind == "glyphs":
        clean = render.glyphs(labels, spec.attribute, spec.fonts, rng)
    elif spec.kind == "digits":
        clean = render.digits(labels, rng)
    elif spec.kind == "scene":
        clean = render.scenes(labels, spec.attribute, rng)
    elif spec.kind == "texture":
        clean = render.textures(labels, spec.attribute, rng)
    else:
        raise ValueError(f"task kind must be glyphs, digits, scene or texture, got {spec.kind!r} ({spec.name})")
    style = rng.integers(len(spec.styles), size=n)
    out = torch.empty_like(clean)
    for i, name in enumerate(spec.styles):
        rows = torch.from_numpy(np.nonzero(style == i)[0])
        if len(rows):
            out[rows] = im.finish(clean[rows], name, rng)
    return (out * 255).round().to(torch.uint8), torch.from_numpy(labels).long()


def content_key(specs: Sequence[TaskSpec], seed: int, n: int) -> str:
    """A hash of everything the generated arrays depend on: the specs, seed, size and the
    source of the generating modules."""
    source = "".join(inspect.getsource(m) for m in (im, render)) + inspect.getsource(generate)
    blob = json.dumps({"specs": [asdict(s) for s in specs], "seed": seed, "n": n, "format": FORMAT,
                       "source": hashlib.sha256(source.encode()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached(specs: Sequence[TaskSpec], seed: int, n: int, label: str, cache: Optional[Path]) -> List[VisionTask]:
    """The tasks of ``specs``, generated or loaded from ``cache`` (None: not cached)."""
    path = None if cache is None else Path(cache) / "vision" / f"{label}-{content_key(specs, seed, n)}.pt"
    if path is not None and path.exists():
        stored = torch.load(path, weights_only=True)
        return [VisionTask(s, x, y) for s, x, y in zip(specs, stored["images"], stored["labels"])]
    tasks = [VisionTask(s, *generate(s, seed, n)) for s in specs]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"images": [t.images for t in tasks], "labels": [t.labels for t in tasks]}, tmp)
        tmp.replace(path)
    return tasks


def resolve_cache(cache) -> Optional[Path]:
    """``cache``: False for no cache, None for the user cache directory
    (lift_ext.shakespeare.cache.cache_dir), else a directory."""
    if cache is False:
        return None
    return cache_dir(cache, knob="cache=")


def load_tasks(seed: int = 0, cache=None) -> List[VisionTask]:
    """The 48 benchmark tasks (TASK_SPECS order), TASK_SIZE images each, from ``seed``;
    ``cache`` as in resolve_cache."""
    return _cached(TASK_SPECS, seed, TASK_SIZE, "tasks", resolve_cache(cache))


def load_upstream(seed: int = 0, cache=None) -> List[VisionTask]:
    """The upstream tasks (UPSTREAM_SPECS), UPSTREAM_SIZE images each, from seed ``seed`` +
    10,007 (never the benchmark's draws)."""
    return _cached(UPSTREAM_SPECS, seed + 10_007, UPSTREAM_SIZE, "upstream", resolve_cache(cache))


def split(specs: Sequence[TaskSpec] = TASK_SPECS, seed: int = 0) -> Dict[str, List[int]]:
    """Task indices per split ("train", "val", "test"): within each group the tasks are
    permuted by ``seed`` and dealt SPLIT_SIZES (8 / 3 / 5 of 16), so every group is in every split."""
    out = {s: [] for s in SPLITS}
    for g, group in enumerate(GROUPS):
        members = [i for i, s in enumerate(specs) if s.group == group]
        need = sum(SPLIT_SIZES.values())
        if len(members) != need:
            raise ValueError(f"group {group!r} has {len(members)} tasks, the split needs {need}")
        order = np.random.default_rng([seed, g]).permutation(members).tolist()
        start = 0
        for s in SPLITS:
            out[s] += order[start:start + SPLIT_SIZES[s]]
            start += SPLIT_SIZES[s]
    return {s: sorted(v) for s, v in out.items()}


def few_shot(task: VisionTask, shots: int, seed: int) -> torch.Tensor:
    """Indices into the support pool: ``shots`` images per class drawn without replacement by
    ``seed`` [shots * classes], in class order."""
    if shots < 1 or shots * task.spec.num_classes > SUPPORT_POOL:
        raise ValueError(f"shots must be in [1, {SUPPORT_POOL // task.spec.num_classes}] for {task.spec.name}, got {shots}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(task.spec.name.encode()))
    labels = task.labels[:SUPPORT_POOL]
    picks = []
    for c in range(task.spec.num_classes):
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:shots]])
    return torch.cat(picks)
