"""Synthetic two-domain benchmark: ``math`` vs ``general`` image questions, deterministic by seed.

``synthesize(out_dir, seed)`` writes ``train.jsonl``, ``calib.jsonl`` and ``eval.jsonl`` (the
record format of :mod:`depthprune.data.records`) plus their PNG images under ``images/<split>/``.

The two domains are built to need different computation, so that they lean on different
depth of a model trained on both (64x64 RGB images, Pillow's built-in font, nothing downloaded):

``math`` — read numbers, then combine them in several sequential steps; numeric answers.
  * ``sum3``  — three digits in three cells of the 4x4 token grid: their sum (read x3, add, add).
  * ``expr``  — ``a+b`` / ``a-b`` drawn in a row of cells, plus a number in the question:
    "compute it, then add n" (read, operate, operate again).
  * ``count`` — shapes of two colours: how many more of one colour (count, count, subtract).
  * ``bars``  — three bars of height 1-4 units: the sum of their heights.
  * ``add2``  — text-only two-digit addition with carries, e.g. "What is 47 + 38?".
  * ``read``  — a 2-3 digit number read back: the reading step alone (a control for the
    reading path; its answer needs no arithmetic).

``general`` — perception and language, no digits anywhere; word answers.
  * ``relation`` — two shapes in one row or column: where the first is relative to the
    second (left / right / above / below).
  * ``which``    — two shapes: the colour of the one left of / above / ... the other.
  * ``caption``  — one shape: "small red circle" (size, colour, kind).
  * ``category`` — text-only: which listed word belongs to a category (five categories).
  * ``opposite`` — text-only: the opposite of a word (24 pairs, several phrasings).

Held-out combinations: the operand tuple of ``sum3``, ``expr`` and ``add2`` is assigned by a
seed-independent hash to train (80%) or held-out (20%); train splits of every seed use only
the first, calib and eval splits only the second, so a model never saw an evaluated sum.
Splits never share a (question, image pixels) pair, nor does any split repeat one. Eval is
drawn first, then calib, then train, each from its own random stream, so the eval and calib
splits of a seed do not depend on ``n_train``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from depthprune.outputs import atomic_dir

SIZE = 64  # image side in pixels: 8x8 patches of 8 px, 4x4 LM tokens after the 2x2 merge
SPLITS = ("eval", "calib", "train")  # generation order: held-out splits first
GLYPH_SIZE = 16  # digits and operators: about 10x11 px, inside one 16x16 token cell
HELD_OUT_PERCENT = 20  # share of operand combinations kept out of every train split

COLORS = {"red": (215, 35, 35), "green": (30, 160, 50), "blue": (35, 70, 215),
          "yellow": (230, 190, 0), "purple": (140, 50, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
CATEGORIES = {
    "an animal": ("cat", "dog", "fish", "bird", "horse", "cow", "sheep", "goat", "mouse", "lion"),
    "a colour": tuple(COLORS) + ("pink", "brown"),
    "a food": ("bread", "apple", "rice", "cheese", "soup", "egg", "pear", "cake"),
    "a vehicle": ("car", "bus", "boat", "train", "bike", "plane", "truck"),
    "a tool": ("hammer", "saw", "spoon", "knife", "brush", "rope", "key"),
}
OPPOSITES = (("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"),
             ("fast", "slow"), ("old", "new"), ("light", "dark"), ("open", "closed"),
             ("wet", "dry"), ("happy", "sad"), ("hard", "soft"), ("early", "late"),
             ("full", "empty"), ("high", "low"), ("long", "short"), ("near", "far"),
             ("left", "right"), ("in", "out"), ("win", "lose"), ("rich", "poor"),
             ("clean", "dirty"), ("strong", "weak"), ("thick", "thin"), ("loud", "quiet"))
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}

_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def held_out(template: str, combo: tuple) -> bool:
    """True if this operand combination belongs to the held-out side (seed-independent)."""
    digest = hashlib.sha256(f"{template}/{combo}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


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
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)


def _shape_in_cell(draw: ImageDraw.ImageDraw, rng: random.Random, cell: int, kind: str,
                   color: tuple[int, int, int], r: float | None = None) -> None:
    row, col = divmod(cell, 4)
    _draw_shape(draw, kind, col * 16 + 8 + rng.uniform(-1, 1), row * 16 + 8 + rng.uniform(-1, 1),
                r if r is not None else rng.uniform(4.5, 6.5), color)


def _draw_in_cells(draw: ImageDraw.ImageDraw, chars: str, cells: list[int], rng: random.Random) -> None:
    """One character per 16x16 cell of the 4x4 grid (cell = row * 4 + col), jittered by 1 px.

    A cell is exactly the area one LM token sees after the 8 px patches are merged 2x2, so a
    digit is never cut across tokens: the tiny vision tower learns to read it in the budget.
    """
    for ch, cell in zip(chars, cells):
        row, col = divmod(cell, 4)
        draw.text((col * 16 + 8 + rng.randint(-1, 1), row * 16 + 8 + rng.randint(-1, 1)), ch,
                  fill=(0, 0, 0), font=_font(GLYPH_SIZE), anchor="mm")


# Each template: rng -> (question, answer, image or None, operand combination or None)
Sample = tuple[str, str, Image.Image | None, tuple | None]


def _math_sum3(rng: random.Random) -> Sample:
    digits = [rng.randint(0, 9) for _ in range(3)]
    im, draw = _canvas()
    _draw_in_cells(draw, "".join(map(str, digits)), sorted(rng.sample(range(16), 3)), rng)
    question = rng.choice(["What is the sum of the three numbers in the image?",
                           "Add the three numbers in the image."])
    return question, str(sum(digits)), im, tuple(digits)


def _math_expr(rng: random.Random) -> Sample:
    a, b, n = rng.randint(0, 9), rng.randint(0, 9), rng.randint(1, 9)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    im, draw = _canvas()
    row, col = rng.randint(0, 3), rng.randint(0, 1)  # three cells left to right
    _draw_in_cells(draw, f"{a}{op}{b}", [row * 4 + col + i for i in range(3)], rng)
    question = rng.choice([f"Compute the expression in the image, then add {n}.",
                           f"What is the expression in the image plus {n}?"])
    return question, str((a + b if op == "+" else a - b) + n), im, (a, op, b, n)


def _math_count(rng: random.Random) -> Sample:
    more, fewer = rng.sample(range(1, 7), 2)
    if more < fewer:
        more, fewer = fewer, more
    (name_a, col_a), (name_b, col_b) = rng.sample(list(COLORS.items()), 2)
    kind = rng.choice(SHAPES)
    im, draw = _canvas()
    cells = rng.sample(range(16), more + fewer)
    for i, cell in enumerate(cells):
        _shape_in_cell(draw, rng, cell, kind, col_a if i < more else col_b)
    question = f"How many more {name_a} shapes than {name_b} shapes are there?"
    return question, str(more - fewer), im, None


def _math_bars(rng: random.Random) -> Sample:
    heights = [rng.randint(1, 4) for _ in range(3)]
    color = rng.choice(list(COLORS.values()))
    im, draw = _canvas()
    draw.line((2, 61, 61, 61), fill=(0, 0, 0), width=1)  # baseline
    for i, h in enumerate(heights):
        x = 6 + i * 20 + rng.randint(-1, 1)
        draw.rectangle((x, 60 - 13 * h, x + 12, 60), fill=color)
    question = rng.choice(["What is the sum of the heights of the three bars?",
                           "Add up the heights of the bars."])
    return question, str(sum(heights)), im, None


def _math_add2(rng: random.Random) -> Sample:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    phrasing = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "What is {a} plus {b}?"])
    return phrasing.format(a=a, b=b), str(a + b), None, (a, b)


def _math_read(rng: random.Random) -> Sample:
    digits = str(rng.randint(10, 999))
    im, draw = _canvas()
    row, col = rng.randint(0, 3), rng.randint(0, 4 - len(digits))
    _draw_in_cells(draw, digits, [row * 4 + col + i for i in range(len(digits))], rng)
    return rng.choice(["What number is written in the image?", "Read the number in the image."]), digits, im, None


def _two_shapes(rng: random.Random) -> tuple[Image.Image, tuple[str, str], tuple[str, str], str]:
    """Two shapes of different colour and kind in one row or column; returns the image, the
    (colour, kind) of the first and second, and where the first is relative to the second."""
    (c1, c2), (k1, k2) = rng.sample(list(COLORS), 2), rng.sample(SHAPES, 2)
    line, (p1, p2) = rng.randint(0, 3), rng.sample(range(4), 2)
    if rng.random() < 0.5:  # same row
        cells, relation = (line * 4 + p1, line * 4 + p2), ("left" if p1 < p2 else "right")
    else:  # same column
        cells, relation = (p1 * 4 + line, p2 * 4 + line), ("above" if p1 < p2 else "below")
    im, draw = _canvas()
    _shape_in_cell(draw, rng, cells[0], k1, COLORS[c1])
    _shape_in_cell(draw, rng, cells[1], k2, COLORS[c2])
    return im, (c1, k1), (c2, k2), relation


def _general_relation(rng: random.Random) -> Sample:
    im, (c1, k1), (c2, k2), relation = _two_shapes(rng)
    question = rng.choice([f"Where is the {c1} {k1} relative to the {c2} {k2}?",
                           f"Is the {k1} left of, right of, above or below the {k2}?"])
    return question, relation, im, None


def _general_which(rng: random.Random) -> Sample:
    im, (c1, _), (_, k2), relation = _two_shapes(rng)
    return f"What colour is the shape {RELATIONS[relation]} the {k2}?", c1, im, None


def _general_caption(rng: random.Random) -> Sample:
    size, color, kind = rng.choice(("small", "big")), rng.choice(list(COLORS)), rng.choice(SHAPES)
    im, draw = _canvas()
    r = rng.uniform(5, 8) if size == "small" else rng.uniform(13, 17)
    _draw_shape(draw, kind, 32 + rng.randint(-8, 8), 32 + rng.randint(-8, 8), r, COLORS[color])
    question = rng.choice(["Describe the shape in the image.", "What is in the image?"])
    return question, f"{size} {color} {kind}", im, None


def _general_category(rng: random.Random) -> Sample:
    category = rng.choice(list(CATEGORIES))
    answer = rng.choice(CATEGORIES[category])
    others = [w for c, ws in CATEGORIES.items() if c != category for w in ws]
    options = rng.sample(others, 2) + [answer]
    rng.shuffle(options)
    return f"Which word is {category}: {', '.join(options)}?", answer, None, None


def _general_opposite(rng: random.Random) -> Sample:
    pair = rng.choice(OPPOSITES)
    word, answer = pair if rng.random() < 0.5 else pair[::-1]
    phrasing = rng.choice(["What is the opposite of {w}?", "Give the opposite of {w}.",
                           "The opposite of {w} is what?", "Name the opposite of the word {w}.",
                           "What word means the opposite of {w}?", "Opposite of {w}?"])
    return phrasing.format(w=word), answer, None, None


#: domain -> [(template name, generator, weight)]
TEMPLATES: dict[str, list[tuple[str, Callable[[random.Random], Sample], float]]] = {
    "math": [("sum3", _math_sum3, 1.0), ("expr", _math_expr, 1.0), ("count", _math_count, 1.0),
             ("bars", _math_bars, 0.6), ("add2", _math_add2, 0.8), ("read", _math_read, 0.5)],
    "general": [("relation", _general_relation, 1.0), ("which", _general_which, 1.0),
                ("caption", _general_caption, 1.0), ("category", _general_category, 0.6),
                ("opposite", _general_opposite, 0.4)],
}


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _generate_split(split: str, n: int, seed: int, seen: set[tuple[str, str]],
                    img_dir: Path) -> list[dict]:
    """``n`` records for ``split``, half per domain (math gets the odd one), new keys only.

    Operand combinations go by :func:`held_out`: train takes the others, calib and eval the
    held-out ones."""
    rng = random.Random(f"depthprune-synth/{seed}/{split}")
    want_held_out = split != "train"
    exhausted: set[tuple[str, str]] = set()
    records = []
    for i in range(n):
        domain = ("math", "general")[i % 2]
        while True:
            choices = [t for t in TEMPLATES[domain] if (domain, t[0]) not in exhausted]
            if not choices:
                raise RuntimeError(f"synthesize: ran out of distinct {domain} records for split "
                                   f"'{split}' at {i} of {n}. Ask for fewer records")
            name, gen, _ = rng.choices(choices, weights=[t[2] for t in choices])[0]
            for _attempt in range(200):
                question, answer, im, combo = gen(rng)
                if combo is not None and held_out(name, combo) != want_held_out:
                    continue
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
        record = {"id": rid, "domain": domain, "image": image, "question": question,
                  "answer": answer, "template": name}
        if combo is not None:
            record["operands"] = list(combo)
        records.append(record)
    return records


def synthesize(out_dir: str | Path, seed: int = 0, n_train: int = 4800, n_calib: int = 256,
               n_eval: int = 1200) -> dict[str, Path]:
    """Write the benchmark into the new directory ``out_dir``; returns split name -> JSONL path.

    The default sizes are the bundled toy's (``depthprune.toy``). Splits with 0 records are
    not written. Records alternate math/general, and carry an extra ``template`` key naming
    the generator (and ``operands`` where the template has held-out combinations). Raises FileExistsError if ``out_dir`` exists and is not empty; the
    directory appears complete or not at all.
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
    with atomic_dir(out, overwrite=False) as tmp:  # never replaces a directory that appeared meanwhile
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
