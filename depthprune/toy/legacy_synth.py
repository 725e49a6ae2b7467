"""The benchmark the bundled toy model was trained on (the first design), kept so that
:func:`depthprune.toy.default_data` matches the shipped weights.

The redesigned benchmark is :mod:`depthprune.synth` (``depthprune data synth``); the toy is
to be retrained on it (see ``toy/README.md``). Original description follows.

Synthetic two-domain benchmark: ``math`` vs ``general`` image questions, deterministic by seed.

``synthesize(out_dir, seed)`` writes ``train.jsonl``, ``calib.jsonl`` and ``eval.jsonl`` (the
record format of :mod:`depthprune.data`) plus their PNG images under ``images/<split>/``.

Domains and templates (64x64 RGB images drawn with Pillow's built-in font, nothing downloaded):

``math`` (numeric answers; the numbers must be read from the image, then combined)
  * ``expr``    — a rendered expression such as ``7+3`` or ``8-5``, one character per token
    cell: its value.
  * ``count``   — 1-6 shapes on a 4x4 grid; the count plus a number given in the question.
  * ``bars``    — three bars of height 1-4 units: the sum of their heights.
  * ``compare`` — two rendered digits in two cells of the grid: the larger one.
  * ``text``    — text-only sums and differences in several phrasings ("What is 2 plus 5?").

``general`` (short answers, perception without arithmetic)
  * ``color``    — colour of a single shape.   * ``shape``    — its kind.
  * ``position`` — the corner it sits in.      * ``word``     — a rendered word (12-word vocabulary).
  * ``digits``   — a rendered 2-3 digit number, read back (no arithmetic; same glyphs as ``expr``).
  * ``text``     — text-only word category, e.g. "Which word is a colour: dog, red, tree?".

Text-only records are rare (weight 0.3 against 1.0 per image template), but every split
opens with one per domain. Splits never share a (question, image pixels) pair, nor does any
split repeat one. Eval is drawn first, then calib, then train, each from its own random stream, so the eval and
calib splits of a seed do not depend on ``n_train``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_dir

SIZE = 64  # image side in pixels: 8x8 patches of 8 px, 4x4 LM tokens after the 2x2 merge
SPLITS = ("eval", "calib", "train")  # generation order: held-out splits first
GLYPH_SIZE = 16  # digits and operators: about 10x11 px, inside one 16x16 token cell

COLORS = {"red": (215, 35, 35), "green": (30, 160, 50), "blue": (35, 70, 215),
          "yellow": (230, 190, 0), "purple": (140, 50, 170)}
SHAPES = ("circle", "square", "triangle")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
WORDS = ("cat", "dog", "sun", "tree", "car", "fish", "bird", "book", "moon", "star", "cake", "boat")
ANIMALS = ("cat", "dog", "fish", "bird", "horse", "cow")
THINGS = ("tree", "car", "book", "moon", "cake", "boat", "chair", "cup")

_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int):
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    im = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    return im, ImageDraw.Draw(im)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
                color: tuple[int, int, int]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=color)
    elif kind == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)


def _draw_text(draw: ImageDraw.ImageDraw, text: str, size: int, cx: float, cy: float) -> None:
    draw.text((cx, cy), text, fill=(0, 0, 0), font=_font(size), anchor="mm")


# Each template: rng -> (question, answer, image or None)
Sample = tuple[str, str, Image.Image | None]


def _draw_in_cells(draw: ImageDraw.ImageDraw, chars: str, cells: list[int], rng: random.Random) -> None:
    """One character per 16x16 cell of the 4x4 grid (cell = row * 4 + col), jittered by 1 px.

    A cell is exactly the area one LM token sees after the 8 px patches are merged 2x2, so a
    digit is never cut across tokens: the tiny vision tower learns to read it in the budget.
    """
    for ch, cell in zip(chars, cells):
        row, col = divmod(cell, 4)
        _draw_text(draw, ch, GLYPH_SIZE, col * 16 + 8 + rng.randint(-1, 1), row * 16 + 8 + rng.randint(-1, 1))


def _math_expr(rng: random.Random) -> Sample:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    im, draw = _canvas()
    row, col = rng.randint(0, 3), rng.randint(0, 1)  # three cells left to right
    _draw_in_cells(draw, f"{a}{op}{b}", [row * 4 + col + i for i in range(3)], rng)
    question = rng.choice(["What is the value of the expression in the image?",
                           "Compute the expression shown in the image."])
    return question, str(a + b if op == "+" else a - b), im


def _math_count(rng: random.Random) -> Sample:
    k, n = rng.randint(1, 6), rng.randint(0, 9)
    kind, color = rng.choice(SHAPES), rng.choice(list(COLORS.values()))
    im, draw = _canvas()
    for cell in rng.sample(range(16), k):  # one shape per 16x16 cell of a 4x4 grid
        row, col = divmod(cell, 4)
        _draw_shape(draw, kind, col * 16 + 8 + rng.uniform(-1, 1), row * 16 + 8 + rng.uniform(-1, 1),
                    rng.uniform(4.5, 6.5), color)
    question = rng.choice([f"Count the shapes in the image and add {n}. What is the result?",
                           f"How many shapes are in the image plus {n}?"])
    return question, str(k + n), im


def _math_bars(rng: random.Random) -> Sample:
    heights = [rng.randint(1, 4) for _ in range(3)]
    color = rng.choice(list(COLORS.values()))
    im, draw = _canvas()
    draw.line((2, 61, 61, 61), fill=(0, 0, 0), width=1)  # baseline
    for i, h in enumerate(heights):
        x = 6 + i * 20 + rng.randint(-1, 1)
        draw.rectangle((x, 60 - 13 * h, x + 12, 60), fill=color)
    question = rng.choice(["What is the sum of the heights of the three bars?",
                           "Add up the heights of the bars. What is the total?"])
    return question, str(sum(heights)), im


def _math_compare(rng: random.Random) -> Sample:
    a, b = rng.sample(range(10), 2)
    im, draw = _canvas()
    _draw_in_cells(draw, f"{a}{b}", sorted(rng.sample(range(16), 2)), rng)
    question = rng.choice(["Which of the two numbers in the image is larger?",
                           "What is the larger number in the image?"])
    return question, str(max(a, b)), im


def _math_text(rng: random.Random) -> Sample:
    # several phrasings of each sum, so a fact asked in the eval split has been seen in
    # training under another wording: the split tests reading the question, not discovering
    # arithmetic from a hundred examples
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        phrasing = rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "{a} + {b} = ?",
                               "What is the sum of {a} and {b}?"])
        return phrasing.format(a=a, b=b), str(a + b), None
    a, b = max(a, b), min(a, b)
    phrasing = rng.choice(["What is {a} minus {b}?", "Subtract {b} from {a}.", "{a} - {b} = ?"])
    return phrasing.format(a=a, b=b), str(a - b), None


def _single_shape(rng: random.Random) -> tuple[Image.Image, str, str, str]:
    kind, color, corner = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(CORNERS)
    im, draw = _canvas()
    cx = (16 if "left" in corner else 48) + rng.randint(-3, 3)
    cy = (16 if "top" in corner else 48) + rng.randint(-3, 3)
    _draw_shape(draw, kind, cx, cy, rng.uniform(8, 12), COLORS[color])
    return im, kind, color, corner


def _general_color(rng: random.Random) -> Sample:
    im, _, color, _ = _single_shape(rng)
    return rng.choice(["What colour is the shape?", "What is the colour of the shape in the image?"]), color, im


def _general_shape(rng: random.Random) -> Sample:
    im, kind, _, _ = _single_shape(rng)
    return rng.choice(["What shape is shown in the image?", "Which kind of shape is this?"]), kind, im


def _general_position(rng: random.Random) -> Sample:
    im, _, _, corner = _single_shape(rng)
    return rng.choice(["In which corner of the image is the shape?",
                       "Where is the shape: top left, top right, bottom left or bottom right?"]), corner, im


def _general_word(rng: random.Random) -> Sample:
    word = rng.choice(WORDS)
    im, draw = _canvas()
    _draw_text(draw, word, 20, SIZE / 2 + rng.randint(-4, 4), SIZE / 2 + rng.randint(-12, 12))
    return rng.choice(["What word is written in the image?", "Read the word in the image."]), word, im


def _general_digits(rng: random.Random) -> Sample:
    # reading without arithmetic: the same glyphs and cell layout as ``math/expr``
    digits = str(rng.randint(10, 999))
    im, draw = _canvas()
    row, col = rng.randint(0, 3), rng.randint(0, 4 - len(digits))
    _draw_in_cells(draw, digits, [row * 4 + col + i for i in range(len(digits))], rng)
    return rng.choice(["What number is written in the image?", "Read the number in the image."]), digits, im


def _general_text(rng: random.Random) -> Sample:
    category, members, others = rng.choice([("a colour", list(COLORS), ANIMALS + THINGS),
                                            ("an animal", list(ANIMALS), tuple(COLORS) + THINGS)])
    answer = rng.choice(members)
    options = rng.sample(others, 2) + [answer]
    rng.shuffle(options)
    return f"Which word is {category}: {', '.join(options)}?", answer, None


#: domain -> [(template name, generator, weight)]; text-only templates are kept rare
TEMPLATES: dict[str, list[tuple[str, Callable[[random.Random], Sample], float]]] = {
    "math": [("expr", _math_expr, 1.0), ("count", _math_count, 1.0), ("bars", _math_bars, 1.0),
             ("compare", _math_compare, 1.0), ("text", _math_text, 0.3)],
    "general": [("color", _general_color, 1.0), ("shape", _general_shape, 1.0),
                ("position", _general_position, 1.0), ("word", _general_word, 1.0),
                ("digits", _general_digits, 1.0),
                ("text", _general_text, 0.3)],
}


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _generate_split(split: str, n: int, seed: int, seen: set[tuple[str, str]],
                    img_dir: Path) -> list[dict]:
    """``n`` records for ``split``, half per domain (math gets the odd one), new keys only."""
    rng = random.Random(f"depthprune-synth/{seed}/{split}")
    exhausted: set[tuple[str, str]] = set()
    records = []
    for i in range(n):
        domain = ("math", "general")[i % 2]
        while True:
            choices = [t for t in TEMPLATES[domain] if (domain, t[0]) not in exhausted]
            if i < 2 and any(t[0] == "text" for t in choices):
                # each split opens with a text-only record per domain, so even a small
                # split has one (the weights keep them rare after that)
                choices = [t for t in choices if t[0] == "text"]
            if not choices:
                raise RuntimeError(f"synthesize: ran out of distinct {domain} records for split "
                                   f"'{split}' at {i} of {n}. Ask for fewer records")
            name, gen, _ = rng.choices(choices, weights=[t[2] for t in choices])[0]
            for _attempt in range(200):
                question, answer, im = gen(rng)
                pixels = hashlib.sha256(im.tobytes()).hexdigest() if im is not None else ""
                key = (question, pixels)
                if key not in seen:
                    break
            else:  # a small finite template (text-only) is used up: stop drawing from it
                exhausted.add((domain, name))
                continue
            break
        seen.add(key)
        rid = f"{split}-{i:05d}"
        image = None
        if im is not None:
            image = f"images/{split}/{rid}.png"
            (img_dir / f"{rid}.png").write_bytes(_png_bytes(im))
        records.append({"id": rid, "domain": domain, "image": image, "question": question,
                        "answer": answer, "template": name})
    return records


def synthesize(out_dir: str | Path, seed: int = 0, n_train: int = 12000, n_calib: int = 128,
               n_eval: int = 400) -> dict[str, Path]:
    """Write the benchmark into the new directory ``out_dir``; returns split name -> JSONL path.

    Splits with 0 records are not written. Records alternate math/general, and carry an
    extra ``template`` key naming the generator. Raises FileExistsError if ``out_dir``
    exists and is not empty; the directory appears complete or not at all.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: output directory exists and is not empty. "
                              "Pass a new path (e.g. add a suffix) or delete it first")
    sizes = {"eval": n_eval, "calib": n_calib, "train": n_train}
    for name, n in sizes.items():
        if n < 0:
            raise ValueError(f"n_{name} must be >= 0, got {n}")
    seen: set[tuple[str, str]] = set()
    written = {}
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            if sizes[split] == 0:
                continue
            img_dir = tmp / "images" / split
            img_dir.mkdir(parents=True)
            records = _generate_split(split, sizes[split], seed, seen, img_dir)
            path = tmp / f"{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            written[split] = out / path.name
    return {s: written[s] for s in ("train", "calib", "eval") if s in written}
