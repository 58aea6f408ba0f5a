"""Scenes for the sample corpora: a coloured ground with 1-3 simple forms on a 3x3 grid,
rendered with Pillow, and English / Chinese descriptions that state exactly what is drawn
(colour, shape, size, position), so a model fine-tuned on them can learn something real.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PALETTE = {
    "red": (200, 35, 35), "blue": (35, 70, 200), "green": (35, 150, 60), "yellow": (240, 210, 45),
    "white": (245, 243, 235), "black": (25, 25, 25), "orange": (240, 130, 25), "purple": (130, 45, 160),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
SIZES = ("small", "large")
TEXTURES = ("canvas", "textile", "mural")
# English phrasings of the nine grid cells (row, col); row 0 is the top.
POSITIONS_EN = {
    (0, 0): ("upper left", "top left"), (0, 1): ("top centre",), (0, 2): ("upper right", "top right"),
    (1, 0): ("centre left", "middle left"), (1, 1): ("centre", "middle"), (1, 2): ("centre right", "middle right"),
    (2, 0): ("lower left", "bottom left"), (2, 1): ("bottom centre",), (2, 2): ("lower right", "bottom right"),
}
STRIPE_ROWS_EN = ("top", "middle", "bottom")
STRIPE_COLS_EN = ("left side", "centre", "right side")

COLOURS_ZH = {"red": "红色", "blue": "蓝色", "green": "绿色", "yellow": "黄色",
              "white": "白色", "black": "黑色", "orange": "橙色", "purple": "紫色"}
SHAPES_ZH = {"circle": "圆形", "square": "方形", "triangle": "三角形", "star": "星形", "diamond": "菱形"}
SIZES_ZH = {"small": "较小的", "large": "较大的"}
POSITIONS_ZH = {
    (0, 0): ("左上方", "左上角"), (0, 1): ("上方正中",), (0, 2): ("右上方", "右上角"),
    (1, 0): ("左侧中部",), (1, 1): ("正中", "中央"), (1, 2): ("右侧中部",),
    (2, 0): ("左下方", "左下角"), (2, 1): ("下方正中",), (2, 2): ("右下方", "右下角"),
}
STRIPE_ROWS_ZH = ("上部", "中部", "下部")
STRIPE_COLS_ZH = ("左侧", "中央", "右侧")


@dataclass(frozen=True)
class Element:
    """One form: a shape in grid cell (row, col), or a full-length stripe (`hstripe` uses
    `row`, `vstripe` uses `col`; the other coordinate is -1)."""

    kind: str
    colour: str
    row: int
    col: int
    size: str = ""

    @property
    def is_stripe(self) -> bool:
        return self.kind in ("hstripe", "vstripe")


@dataclass(frozen=True)
class Scene:
    """A ground colour plus forms (stripe first, then shapes in reading order); all colours differ."""

    background: str
    elements: tuple[Element, ...]


class SceneSampler:
    """Draws random scenes, never the same one twice."""

    def __init__(self, rng: random.Random):
        self.rng, self.seen = rng, set()

    def draw(self) -> Scene:
        while True:
            scene = random_scene(self.rng)
            if scene not in self.seen:
                self.seen.add(scene)
                return scene


def random_scene(rng: random.Random) -> Scene:
    """A ground plus 1-3 forms in distinct cells; at most one stripe (only beside other shapes)."""
    colours = rng.sample(sorted(PALETTE), 4)
    k = rng.choice((1, 2, 2, 3, 3))
    stripe = k >= 2 and rng.random() < 0.3
    elements = []
    if stripe:
        line = rng.randrange(3)
        elements.append(Element("hstripe", colours[1], line, -1) if rng.random() < 0.5
                        else Element("vstripe", colours[1], -1, line))
    cells = sorted(rng.sample(sorted(POSITIONS_EN), k - stripe))
    for (row, col), colour in zip(cells, colours[1 + stripe:]):
        elements.append(Element(rng.choice(SHAPES), colour, row, col, rng.choice(SIZES)))
    return Scene(colours[0], tuple(elements))


def _shape_points(kind: str, cx: float, cy: float, h: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        return [(cx, cy - h), (cx + h, cy + 0.8 * h), (cx - h, cy + 0.8 * h)]
    if kind == "diamond":
        return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
    angles = np.deg2rad(-90 + 36 * np.arange(10))  # star: outer and inner radius alternate
    radii = np.where(np.arange(10) % 2 == 0, h, 0.45 * h)
    return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for r, a in zip(radii, angles)]


def render(scene: Scene, size: int = 120, texture: str = "canvas", seed=0) -> Image.Image:
    """Draw the scene at 2x, downsample, then add grain, uneven paint and a canvas, textile
    weave or mural texture (deterministic for `seed`, an int or a sequence of ints)."""
    big = size * 2
    cell = big / 3
    img = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(img)
    for e in scene.elements:
        fill = PALETTE[e.colour]
        if e.kind == "hstripe":
            draw.rectangle([0, (e.row + 0.32) * cell, big, (e.row + 0.68) * cell], fill=fill)
        elif e.kind == "vstripe":
            draw.rectangle([(e.col + 0.32) * cell, 0, (e.col + 0.68) * cell, big], fill=fill)
        else:
            cx, cy = (e.col + 0.5) * cell, (e.row + 0.5) * cell
            h = cell * (0.43 if e.size == "large" else 0.29)
            if e.kind == "circle":
                draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
            elif e.kind == "square":
                draw.rectangle([cx - 0.85 * h, cy - 0.85 * h, cx + 0.85 * h, cy + 0.85 * h], fill=fill)
            else:
                draw.polygon(_shape_points(e.kind, cx, cy, h), fill=fill)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, 4, (size, size, 1)) + rng.normal(0, 2, (size, size, 3))
    low = Image.fromarray(rng.normal(0, 8 if texture == "mural" else 5, (6, 6)).astype(np.float32))
    arr += np.asarray(low.resize((size, size), Image.Resampling.BICUBIC))[..., None]
    yy, xx = np.mgrid[0:size, 0:size]
    if texture == "textile":
        arr += (6.0 * (((xx // 2) + (yy // 2)) % 2) - 3.0)[..., None]
    elif texture == "canvas":
        arr += (2.5 * np.sin(xx * 1.9) * np.sin(yy * 2.2))[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------- English
def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _np_en(e: Element, rng: random.Random) -> str:
    if e.is_stripe:
        adj = "horizontal" if e.kind == "hstripe" else "vertical"
        return _a(f"{adj} {e.colour} {rng.choice(('stripe', 'band'))}")
    return _a(f"{e.size} {e.colour} {e.kind}")


def _where_en(e: Element, rng: random.Random) -> str:
    if e.kind == "hstripe":
        return f"across the {STRIPE_ROWS_EN[e.row]}"
    if e.kind == "vstripe":
        return f"down the {STRIPE_COLS_EN[e.col]}"
    return f"in the {rng.choice(POSITIONS_EN[(e.row, e.col)])}"


_SHAPE_CLAUSES = ("{np} floats in the {p}", "{np} sits at the {p}", "in the {p} the painter placed {np}",
                  "{np} is set in the {p}", "{np} occupies the {p}", "the {p} holds {np}")
_STRIPE_CLAUSES = {"hstripe": ("{np} runs across the {p}", "{np} crosses the {p}"),
                   "vstripe": ("{np} runs down the {p}", "{np} descends through the {p}")}


def _clause_en(e: Element, rng: random.Random) -> str:
    if e.kind == "hstripe":
        p = STRIPE_ROWS_EN[e.row]
    elif e.kind == "vstripe":
        p = STRIPE_COLS_EN[e.col]
    else:
        p = rng.choice(POSITIONS_EN[(e.row, e.col)])
    templates = _STRIPE_CLAUSES[e.kind] if e.is_stripe else _SHAPE_CLAUSES
    return rng.choice(templates).format(np=_np_en(e, rng), p=p)


def _ground_en(scene: Scene, rng: random.Random) -> str:
    return _a(f"{scene.background} {rng.choice(('ground', 'background', 'field'))}")


def _series(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]


CAPTION_TEMPLATES_EN = 7


def caption_en(scene: Scene, rng: random.Random, template: int | None = None) -> str:
    """One English sentence (or two) stating every form of the scene; `template` picks the phrasing."""
    t = rng.randrange(CAPTION_TEMPLATES_EN) if template is None else template
    els = list(scene.elements)
    ground = _ground_en(scene, rng)
    clauses = [_clause_en(e, rng) for e in els]
    items = [f"{_np_en(e, rng)} {_where_en(e, rng)}" for e in els]
    if t == 0:
        return f"On {ground}, " + "; ".join(clauses) + "."
    if t == 1:
        return _cap(", ".join(clauses)) + f", {'all ' if len(els) > 1 else ''}against {ground}."
    if t == 2:
        return f"The painting shows {ground} with {_series(items)}."
    if t == 3:
        return f"{_cap(ground)} fills the picture. " + " ".join(_cap(c) + "." for c in clauses)
    if t == 4:
        return f"Against {ground}, the artist set {_series(items)}."
    if t == 5:
        return f"Simple geometric forms on {ground}: " + "; ".join(items) + "."
    return f"An abstract composition: {_series(items)}, on {ground}."


def captions_en(scene: Scene, rng: random.Random, k: int = 5) -> list[str]:
    """`k` different paraphrases of the same content (distinct templates, shuffled form order)."""
    out = []
    for t in rng.sample(range(CAPTION_TEMPLATES_EN), k):
        forms = list(scene.elements)
        rng.shuffle(forms)
        out.append(caption_en(Scene(scene.background, tuple(forms)), rng, t))
    return out


def visual_sentences_en(scene: Scene, rng: random.Random) -> list[str]:
    """Artpedia-style visual sentences: the ground, then one sentence per form."""
    intro = rng.choice(("The painting is set on {g}.", "The canvas is covered by {g}.",
                        "The composition rests on {g}."))
    return [intro.format(g=_ground_en(scene, rng))] + [_cap(_clause_en(e, rng)) + "." for e in scene.elements]


def title_en(scene: Scene, rng: random.Random) -> str:
    """A plausible title naming the main form."""
    main = next((e for e in scene.elements if not e.is_stripe), scene.elements[0])
    name = "stripe" if main.is_stripe else main.kind
    return rng.choice((f"{main.colour.title()} {name.title()} on {scene.background.title()}",
                       f"Composition with {main.colour.title()} {name.title()}",
                       f"Untitled ({len(scene.elements)} {'Form' if len(scene.elements) == 1 else 'Forms'})"))


# ----------------------------------------------------------------------------- Chinese
_ZH_TEMPLATES = {
    "textile": (("{g}地上，", "织"), ("此织物以{g}为地，", "饰"), ("纹样以{g}为底色，", "显")),
    "mural": (("壁画以{g}为底，", "绘"), ("{g}底壁面上，", "画有"), ("此幅图案{g}作地，", "描")),
}


def caption_zh(scene: Scene, rng: random.Random, texture: str = "textile", template: int | None = None) -> str:
    """A simplified-Chinese pattern description in the textile or mural register."""
    choices = _ZH_TEMPLATES["mural" if texture == "mural" else "textile"]
    head, verb = choices[rng.randrange(len(choices)) if template is None else template % len(choices)]
    clauses = []
    for e in scene.elements:
        colour = COLOURS_ZH[e.colour]
        if e.kind == "hstripe":
            clauses.append(f"{STRIPE_ROWS_ZH[e.row]}横贯一道{colour}横条纹")
        elif e.kind == "vstripe":
            clauses.append(f"{STRIPE_COLS_ZH[e.col]}纵贯一道{colour}竖条纹")
        else:
            suffix = rng.choice(("团窠", "纹样") if e.kind == "circle" else ("纹样", "纹", "图案"))
            pos = rng.choice(POSITIONS_ZH[(e.row, e.col)])
            clauses.append(f"{pos}{verb}一{SIZES_ZH[e.size]}{colour}{SHAPES_ZH[e.kind]}{suffix}")
    return head.format(g=COLOURS_ZH[scene.background]) + "，".join(clauses) + "。"
