"""Answer rules: what part of a generated text is the answer, and whether it matches the reference.

Answer policy (one rule each, always the *last* occurrence, since reasoning ends in its answer):

1. :func:`extract_answer` cuts chat leftovers (end-of-turn markers, a new "Question:"/"User:"
   turn, ``<think>`` blocks, role labels), then takes the last ``\\boxed{...}`` (nested braces
   allowed), else the last "the answer is X" / "Answer: X" (X up to the end of its sentence),
   else the whole text; LaTeX and markdown wrappers and trailing punctuation are removed.
2. :func:`score_answer` compares the extracted answer with the reference:
   multiple choice (the record's ``choices``, or a bare letter reference) by option index,
   from a letter ("B", "(b)", "B) blue", "option B") or the option text; numeric references
   by value (the whole answer if it is a number, else the *last* number in it; "1,000",
   "-3", "1/2" = "0.5", "\\frac{1}{2}", "$5", "50%"; number words 0-99 only when they are the
   whole answer, because "one" is too common a word), within relative or absolute 1e-6;
   other references as normalised text (case, punctuation, articles "a/an/the" and spacing
   ignored): equal, or, for a short answer (at most 6 words longer than the reference), the
   reference as a whole-word phrase in it with no negation the reference lacks
   ("It is red." = "red"; "reddish", "not red" != "red"). yes/no references use the first word.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

# ----------------------------------------------------------------------------- extraction
_END_OF_TURN = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<\|end\|>|<\|endoftext\|>|<end_of_turn>|</s>"
                          r"|<\|im_start\|>|<start_of_turn>|\n\s*(?:question|q|user|human)\s*:", re.I)
_TURN_OPENER = re.compile(r"^\s*(?:<\|im_start\|>|<start_of_turn>)")
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]*\|>|</?s>|</?think>")
_ROLE_LABEL = re.compile(r"^\s*(?:assistant|model)\s*(?::|\n)", re.I)
_ANSWER_IS = re.compile(r"\banswer\b(?:\s+(?:to|for|of)\b[^.\n:]*?)?\s*(?:is\b|:|=)\s*:?\s*"
                        r"(.+?)\s*(?=\.\s|\.$|\n|$)", re.I)
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i:j - 1] if depth == 0 else text[i:]  # unclosed: cut by max_new_tokens


def _strip_latex(text: str) -> str:
    previous = None
    while previous != text:  # innermost first, so nested wrappers unwrap in turns
        previous = text
        text = _LATEX_FRAC.sub(r"\1/\2", _LATEX_WRAPPERS.sub(r"\1", text))
    text = re.sub(r"\^\s*\{?\\circ\}?|\\(?:left|right)\b|\\[,;:! ]", " ", text)
    return text.replace("\\%", "%").replace("\\$", "$").replace("$", "")


def extract_answer(text: str) -> str:
    """The final answer in a model output: last ``\\boxed{}``, else last "answer is X" /
    "Answer: X", else the whole cleaned text (see the module docstring). Returns a string
    without chat leftovers, LaTeX/markdown wrappers or trailing punctuation ("" if none)."""
    # a leading turn opener ("<|im_start|>assistant") opens the answer; any later one ends it
    text = _END_OF_TURN.split(_TURN_OPENER.sub("", str(text)), maxsplit=1)[0]
    if "</think>" in text:  # reasoning models: the answer follows the last thinking block
        text = text.rsplit("</think>", 1)[1]
    text = _ROLE_LABEL.sub("", _SPECIAL_TOKEN.sub("", text))
    boxed = _last_boxed(text)
    if boxed is not None:
        text = boxed
    else:
        found = _ANSWER_IS.findall(text)
        text = found[-1] if found else text
    text = _strip_latex(text).replace("**", "").replace("`", "")
    text = re.sub(r"\s+", " ", text).strip().rstrip(" .,;:!?").strip(" \"'*“”‘’")
    return text.rstrip(" .,;:!?")


# ----------------------------------------------------------------------------- numbers, text
_NUM = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(rf"(?<![\w.])({_NUM})(?:\s*/\s*({_NUM}))?")
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORD = re.compile(rf"(?:(minus|negative)\s+)?(?:({'|'.join(_TENS)})(?:[-\s]({'|'.join(_UNITS[1:10])}))?"
                          rf"|({'|'.join(_UNITS)}))")
_NEGATIONS = {"not", "no", "never", "neither", "nor", "none", "isnt", "arent", "wasnt", "werent",
              "dont", "doesnt", "didnt", "cannot", "cant", "wont"}


def _number_value(match: re.Match) -> float | None:
    value = float(match.group(1).replace(",", ""))
    if match.group(2) is None:
        return value
    denominator = float(match.group(2).replace(",", ""))
    return value / denominator if denominator else None


def _number_text(text: str) -> str:
    text = _strip_latex(text).lower().replace("\u2212", "-").replace("$", "").replace("%", "")
    return text.strip().rstrip(".,;:!?").strip()


def parse_number(text: str) -> float | None:
    """The value of ``text`` if all of it is one number ("1,000", "-3.5", "1/2", "$5", "50%",
    "seven", "twenty-one"), else None."""
    text = _number_text(text)
    match = _NUMBER.fullmatch(text)
    if match:
        return _number_value(match)
    match = _NUMBER_WORD.fullmatch(text)
    if not match:
        return None
    sign, tens, unit, small = match.groups()
    value = _UNITS.index(small) if small else 20 + 10 * _TENS.index(tens) + (_UNITS.index(unit) if unit else 0)
    return float(-value if sign else value)


def last_number(text: str) -> float | None:
    """The value of the last number written in digits in ``text`` (None if there is none)."""
    matches = list(_NUMBER.finditer(_number_text(text)))
    return _number_value(matches[-1]) if matches else None


def normalize_text(text: str) -> str:
    """Lower-cased, punctuation and articles (a/an/the) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = re.sub(r"['’`]", "", text)  # "isn't" -> "isnt", one word
    text = re.sub(r"[\W_]+", " ", text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def _mentions(prediction: str, reference: str) -> bool:
    """A short prediction naming the reference as a whole phrase, not negated (normalised)."""
    p_words, r_words = prediction.split(), reference.split()
    return (bool(r_words) and f" {reference} " in f" {prediction} "
            and len(p_words) <= len(r_words) + 6 and not (_NEGATIONS & (set(p_words) - set(r_words))))


_LETTER = re.compile(r"\(([a-z])\)|(?:option|choice)(?:\s*\(|\s+)([a-z])\)?(?!\w)"
                     r"|([a-z])(?=[.,:)](?:\s|$)|$)", re.I)


def _letter(answer: str) -> int | None:
    """0-based option index of "B", "(b)", "B) blue", "B, blue", "option B" (None otherwise).
    A bare letter must end the answer or be followed by ".,:)", so "a square" holds no letter."""
    match = _LETTER.match(answer.strip())
    if not match:
        return None
    return ord(next(g for g in match.groups() if g).upper()) - ord("A")


def _choice_index(answer: str, options: list[str]) -> int | None:
    letter = _letter(answer)
    if letter is not None and letter < len(options):
        return letter
    norm, norm_options = normalize_text(answer), [normalize_text(o) for o in options]
    if norm in norm_options:
        return norm_options.index(norm)
    hits = [i for i, o in enumerate(norm_options) if _mentions(norm, o)]
    # "dark red" also mentions "red": keep only options not contained in another hit
    hits = [i for i in hits
            if not any(j != i and f" {norm_options[i]} " in f" {norm_options[j]} " for j in hits)]
    return hits[0] if len(hits) == 1 else None


def _options(choices: Any) -> list[str]:
    if isinstance(choices, dict):  # {"A": "red", "B": "blue"}
        return [str(choices[k]) for k in sorted(choices)]
    return [str(c) for c in choices or []]


def score_answer(prediction: str, reference: str, choices: Sequence[str] | dict | None = None) -> bool:
    """True if the model output ``prediction`` gives ``reference`` (rules in the module
    docstring). ``choices``: the record's options, as a list (letters A, B, ... in order) or
    a {letter: text} dict; the reference may then be a letter or an option's text."""
    pred, ref = extract_answer(prediction), extract_answer(str(reference))
    options = _options(choices)
    if options:
        ref_index = _choice_index(ref, options)
        if ref_index is not None:
            pred_index = _choice_index(pred, options)
            if pred_index is not None:
                return pred_index == ref_index
            ref = options[ref_index]  # no option picked out: judge it as a free answer
    elif re.fullmatch(r"\(?[A-Z]\)?", ref) and _letter(pred) is not None:
        return _letter(pred) == _letter(ref)
    ref_value = parse_number(ref)
    if ref_value is not None:
        value = parse_number(pred)
        value = last_number(pred) if value is None else value
        return value is not None and math.isclose(value, ref_value, rel_tol=1e-6, abs_tol=1e-6)
    p, r = normalize_text(pred), normalize_text(ref)
    if p == r:
        return bool(r) or pred.strip().lower() == ref.strip().lower()
    if r in ("yes", "no") and p.split()[0:1] in (["yes"], ["no"]):
        return p.split()[0] == r
    return _mentions(p, r)
