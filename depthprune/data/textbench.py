"""A text-only two-domain benchmark for small instruction-tuned LLMs: ``math`` vs ``general``.

``math``: arithmetic (addition, subtraction, multiplication with small operands) and
one-step word problems ("Tom has 3 apples and buys 4 more..."); answers are integers.
``general``: everyday knowledge and word facts (capitals, opposites, plurals, young
animals, colours, what things are for); answers are one word. Every answer is short and
checked by :func:`depthprune.evaluation.answers.score_answer` (numbers by value, words as
normalised text). The questions were chosen so that SmolLM2-135M-Instruct answers a fair
fraction, not none and not all (docs/results/smollm2.md has its measured accuracy).

Splits: ``calib`` (for scoring and ablation) and ``eval``; they share no question (the
general facts and the math operand tuples are drawn without replacement from one pool).
Same seed and sizes, same bytes. Files are written atomically (:mod:`depthprune.outputs`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from depthprune.outputs import atomic_dir

DOMAINS = ("math", "general")
MATH_SUFFIX = " Answer with a number."
GENERAL_SUFFIX = " Answer with one word."

_CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
             ("Spain", "Madrid"), ("England", "London"), ("Russia", "Moscow"), ("China", "Beijing"),
             ("Egypt", "Cairo"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
             ("Austria", "Vienna"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
             ("Thailand", "Bangkok"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"),
             ("Argentina", "Buenos Aires"), ("South Korea", "Seoul"), ("Finland", "Helsinki"),
             ("Denmark", "Copenhagen"), ("Hungary", "Budapest"), ("Belgium", "Brussels")]
_OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("happy", "sad"),
              ("fast", "slow"), ("wet", "dry"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
              ("black", "white"), ("top", "bottom"), ("win", "lose"), ("push", "pull"),
              ("rich", "poor"), ("heavy", "light"), ("thick", "thin"), ("strong", "weak"),
              ("left", "right"), ("inside", "outside"), ("good", "bad"), ("true", "false"),
              ("north", "south"), ("east", "west"), ("buy", "sell"), ("love", "hate"),
              ("first", "last"), ("tall", "short"), ("noisy", "quiet"), ("clean", "dirty"),
              ("friend", "enemy"), ("question", "answer"), ("begin", "end"), ("alive", "dead")]
_PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"),
            ("man", "men"), ("woman", "women"), ("goose", "geese"), ("person", "people"),
            ("knife", "knives"), ("leaf", "leaves"), ("wolf", "wolves"), ("box", "boxes"),
            ("baby", "babies"), ("city", "cities"), ("ox", "oxen"), ("cactus", "cacti"),
            ("sheep", "sheep"), ("fish", "fish"), ("half", "halves"), ("wife", "wives")]
_YOUNG = [("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
          ("frog", "tadpole"), ("duck", "duckling"), ("goat", "kid"), ("bear", "cub"),
          ("kangaroo", "joey"), ("swan", "cygnet"), ("deer", "fawn"), ("hen", "chick")]
_COLOURS = [("the sky on a clear day", "blue"), ("grass", "green"), ("a ripe banana", "yellow"),
            ("snow", "white"), ("blood", "red"), ("coal", "black"), ("a carrot", "orange"),
            ("a lemon", "yellow"), ("milk", "white"), ("a ripe tomato", "red"), ("chocolate", "brown"),
            ("a fire truck", "red"), ("the sun", "yellow"), ("a lime", "green"), ("an eggplant", "purple")]
_FACTS = [("What do bees make?", "honey"), ("What animal says moo?", "cow"),
          ("What animal barks?", "dog"), ("What animal says meow?", "cat"),
          ("What do you use to cut paper?", "scissors"), ("What do you wear on your feet?", "shoes"),
          ("What do you use to write on a blackboard?", "chalk"), ("What falls from clouds when it rains?", "water"),
          ("What is frozen water called?", "ice"), ("What do we breathe to stay alive?", "air"),
          ("What is the largest planet in our solar system?", "Jupiter"),
          ("What planet do we live on?", "Earth"), ("What is the closest star to Earth?", "Sun"),
          ("What is the opposite of a question?", "answer"), ("What do you call a person who teaches?", "teacher"),
          ("What do you call a person who flies a plane?", "pilot"),
          ("What do you call a doctor for animals?", "vet"), ("What do spiders spin?", "web"),
          ("What gas do plants take in from the air?", "carbon dioxide"),
          ("Which season comes after winter?", "spring"), ("Which season comes after summer?", "autumn"),
          ("Which day comes after Monday?", "Tuesday"), ("Which day comes after Friday?", "Saturday"),
          ("Which month comes after January?", "February"), ("Which month comes after June?", "July"),
          ("What do you call the meal eaten in the morning?", "breakfast"),
          ("What language is spoken in France?", "French"), ("What language is spoken in Spain?", "Spanish"),
          ("What language is spoken in Germany?", "German"), ("What language is spoken in Italy?", "Italian"),
          ("What is the largest ocean on Earth?", "Pacific"), ("What is the hottest planet in our solar system?", "Venus"),
          ("Which organ pumps blood around the body?", "heart"), ("What do you use to see?", "eyes"),
          ("What do you use to hear?", "ears"), ("What do fish use to breathe?", "gills"),
          ("What is the young of a butterfly called?", "caterpillar"),
          ("What do you call a house made of ice?", "igloo"), ("What do you call a baby human?", "baby"),
          ("What is the main ingredient of bread?", "flour"), ("What do cows drink?", "water"),
          ("What metal is a wedding ring usually made of?", "gold"),
          ("What instrument has black and white keys?", "piano"),
          ("Which animal is known as the king of the jungle?", "lion"),
          ("Which bird is a symbol of peace?", "dove"), ("What is the tallest animal?", "giraffe"),
          ("What is the largest animal on Earth?", "whale"), ("What do pandas mostly eat?", "bamboo"),
          ("What do monkeys like to eat?", "bananas"), ("What is the name of our galaxy?", "Milky Way")]

# Training-only word questions (regular word forms, calendar order): ``--n-train`` draws from
# these and from the general questions that calib/eval left unused, so healing data never
# repeats an evaluated question and the calib/eval splits stay what they were.
_REGULAR_PLURALS = ["cat", "book", "tree", "car", "bird", "cup", "hat", "pen", "door", "shoe",
                    "bus", "dress", "church", "watch", "glass", "fox", "dish", "brush", "class", "bench",
                    "party", "lady", "story", "toy", "key", "day", "boy", "song", "lamp"]
_PAST_TENSE = [("walk", "walked"), ("play", "played"), ("jump", "jumped"), ("talk", "talked"),
               ("open", "opened"), ("clean", "cleaned"), ("cook", "cooked"), ("help", "helped"),
               ("look", "looked"), ("call", "called"), ("dance", "danced"), ("smile", "smiled"),
               ("go", "went"), ("eat", "ate"), ("see", "saw"), ("run", "ran"), ("swim", "swam"),
               ("sing", "sang"), ("write", "wrote"), ("drink", "drank"), ("take", "took"),
               ("give", "gave"), ("come", "came"), ("make", "made"), ("sleep", "slept"),
               ("think", "thought"), ("bring", "brought"), ("teach", "taught"), ("fly", "flew"),
               ("speak", "spoke")]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _train_only_pool() -> list[tuple[str, str, str]]:
    """General questions used only by the train split, as (kind, question, answer)."""
    pool = [("plural", f"What is the plural of '{w}'?", _plural(w)) for w in _REGULAR_PLURALS]
    pool += [("past", f"What is the past tense of '{w}'?", a) for w, a in _PAST_TENSE]
    for names in (_DAYS, _MONTHS):
        pool += [("next", f"What comes after {a}?", names[(i + 1) % len(names)])
                 for i, a in enumerate(names)]
    return pool


_NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Leo", "Emma", "Max", "Zoe", "Jack", "Ella"]
_ITEMS = ["apples", "pencils", "books", "cookies", "marbles", "stickers", "balloons", "cards", "coins", "shells"]


def _general_pool() -> list[tuple[str, str, str]]:
    """Every general question as (kind, question, answer); questions are distinct."""
    pool = [("capital", f"What is the capital of {c}?", a) for c, a in _CAPITALS]
    pool += [("opposite", f"What is the opposite of '{w}'?", a) for w, a in _OPPOSITES]
    pool += [("plural", f"What is the plural of '{w}'?", a) for w, a in _PLURALS]
    pool += [("young", f"What is a young {w} called?", a) for w, a in _YOUNG]
    pool += [("colour", f"What colour is {thing}?", a) for thing, a in _COLOURS]
    pool += [("fact", q, a) for q, a in _FACTS]
    return pool


def _math_question(rng: random.Random, used: set) -> tuple[str, str, int]:
    """One math question not yet in ``used`` as (kind, question, answer)."""
    while True:
        kind = rng.choice(["add", "sub", "mul", "word-add", "word-sub"])
        if kind == "add":
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            key, question, answer = (kind, a, b), f"What is {a} + {b}?", a + b
        elif kind == "sub":
            a = rng.randint(5, 40)
            b = rng.randint(1, a - 1)
            key, question, answer = (kind, a, b), f"What is {a} - {b}?", a - b
        elif kind == "mul":
            a, b = rng.randint(2, 10), rng.randint(2, 10)
            key, question, answer = (kind, a, b), f"What is {a} times {b}?", a * b
        else:
            name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
            a = rng.randint(2, 12)
            b = rng.randint(1, 9) if kind == "word-add" else rng.randint(1, a - 1)
            key = (kind, name, item, a, b)
            if kind == "word-add":
                question, answer = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
            else:
                question, answer = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?", a - b
        if key not in used:
            used.add(key)
            return kind, question, answer


def build_splits(seed: int = 0, n_calib: int = 40, n_eval: int = 100,
                 n_train: int = 0) -> dict[str, list[dict]]:
    """The records of each split: ``n_calib`` / ``n_eval`` / ``n_train`` records *per domain*.

    Returns {"calib": [...], "eval": [...]} plus "train" when ``n_train`` > 0 (JSON-ready
    dicts with id, domain, question, answer, kind). calib and eval do not depend on
    ``n_train``: train is drawn after them, from the questions they left unused plus
    training-only word questions. Raises ValueError if the pools are too small.
    """
    pool = _general_pool()
    if n_calib < 0 or n_eval < 0 or n_train < 0:
        raise ValueError(f"--n-calib, --n-eval and --n-train must be >= 0, got {n_calib}, {n_eval}, {n_train}")
    if n_calib + n_eval > len(pool):
        raise ValueError(f"--n-calib {n_calib} + --n-eval {n_eval} exceeds the {len(pool)} distinct "
                         "general questions; lower them")
    n_train_pool = len(pool) - n_calib - n_eval + len(_train_only_pool())
    if n_train > n_train_pool:
        raise ValueError(f"--n-train {n_train} exceeds the {n_train_pool} general questions left for "
                         f"training with --n-calib {n_calib} --n-eval {n_eval}; lower it")
    rng = random.Random(seed)
    general = pool[:]
    rng.shuffle(general)
    used: set = set()

    def split_records(split: str, n: int, general_items: list[tuple[str, str, str]]) -> list[dict]:
        """``n`` fresh math questions (drawn now, so the rng order stays per split), then the
        first ``n`` of ``general_items``."""
        records = []
        for i in range(n):
            kind, question, answer = _math_question(rng, used)
            records.append({"id": f"{split}-math-{i:04d}", "domain": "math", "kind": kind,
                            "question": question + MATH_SUFFIX, "answer": str(answer)})
        for i, (kind, question, answer) in enumerate(general_items[:n]):
            records.append({"id": f"{split}-general-{i:04d}", "domain": "general", "kind": kind,
                            "question": question + GENERAL_SUFFIX, "answer": answer})
        return records

    out = {"calib": split_records("calib", n_calib, general[:n_calib]),
           "eval": split_records("eval", n_eval, general[n_calib:n_calib + n_eval])}
    if n_train:
        train_general = general[n_calib + n_eval:] + _train_only_pool()
        rng.shuffle(train_general)
        out["train"] = split_records("train", n_train, train_general)
    return out


def write_text_benchmark(out_dir: str | Path, seed: int = 0, n_calib: int = 40, n_eval: int = 100,
                         overwrite: bool = False, n_train: int = 0) -> dict[str, Path]:
    """Write ``calib.jsonl`` and ``eval.jsonl`` (and ``train.jsonl`` when ``n_train``) under
    ``out_dir`` atomically.

    Returns {split: path}. Raises FileExistsError if ``out_dir`` exists and is not empty
    (unless ``overwrite``), ValueError for sizes the question pool cannot meet.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty. Choose another --out or pass --overwrite")
    splits = build_splits(seed, n_calib, n_eval, n_train)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for split, records in splits.items():
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            (tmp / f"{split}.jsonl").write_text(text, encoding="utf-8")
        (tmp / "README.md").write_text(
            f"# depthprune text benchmark (seed {seed})\n\n`calib.jsonl`: {n_calib} and `eval.jsonl`: "
            f"{n_eval} records per domain (math, general)"
            + (f", `train.jsonl`: {n_train} per domain" if n_train else "")
            + "; the splits share no question. Written by "
            f"`depthprune data text --seed {seed} --n-calib {n_calib} --n-eval {n_eval}"
            + (f" --n-train {n_train}" if n_train else "") + "`.\n")
    return {split: out / f"{split}.jsonl" for split in splits}


__all__ = ["DOMAINS", "build_splits", "write_text_benchmark"]
