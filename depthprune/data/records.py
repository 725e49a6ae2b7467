"""Calibration / evaluation records: JSONL in, processor batches out.

One record a line::

    {"id": "q1", "domain": "math", "image": "imgs/1.png" | ["a.png", "b.png"] | null,
     "question": "...", "answer": "..."}

``messages`` (the Hugging Face chat format) may replace ``question``; image paths are
relative to the JSONL file. Domains are free labels. Every error names the file and the
1-based line number, what was wrong and how to fix it.

Prompts are written in one of two formats (``--prompt-format``, decided once per run by
:func:`set_prompt_format`): ``chat``, the model's own chat template, or ``plain``, for base
models without one::

    Question: {question}
    Answer: {answer}

``auto`` (the default) is chat when the tokenizer has a chat template, else plain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from depthprune.data.encodings import EncodingCache
from depthprune.messages import show
from depthprune.options import RankError


class DataError(ValueError):
    """A calibration or evaluation file is malformed; the message names file and line."""


@dataclass(frozen=True)
class Record:
    """One prompt. ``images`` are absolute paths, in the order they appear in the prompt."""

    id: str
    domain: str
    question: str | None
    answer: str | None = None
    images: tuple[Path, ...] = ()
    messages: tuple[dict, ...] | None = None
    source: str = ""  # "file.jsonl:LINE", for error messages
    extra: dict = field(default_factory=dict, compare=False, hash=False)


_KNOWN_KEYS = {"id", "domain", "image", "images", "question", "answer", "messages"}


def _fail(source: str, what: str, fix: str) -> DataError:
    return DataError(f"{source}: {what}. {fix}")


def _image_value(obj: dict) -> Any:
    """A record's top-level image reference(s): ``image``, else ``images``."""
    return obj.get("image", obj.get("images"))


def _part_image(part: dict) -> Any:
    """The image reference of a ``{"type": "image", ...}`` message part."""
    return part.get("image") or part.get("path") or part.get("url")


def referenced_images(path: str | Path) -> list[Path]:
    """The image files the records of the JSONL file ``path`` name (top-level and in messages),
    as paths relative to the file's folder like :func:`parse_record` resolves them, without
    decoding any image. Cheap and tolerant (for the output guard, before the data is
    validated): unreadable, malformed or oddly shaped lines and missing images are skipped (the
    loader reports them)."""
    path = Path(path)
    refs: list[str] = []
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError:
        return []
    for raw in raw_lines:
        if b"image" not in raw:
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if not isinstance(obj, dict):
            continue
        value = _image_value(obj)
        refs += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
        messages = obj.get("messages")
        for turn in messages if isinstance(messages, list) else []:
            content = turn.get("content") if isinstance(turn, dict) else None
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and part.get("type") == "image" and isinstance(_part_image(part), str):
                    refs.append(_part_image(part))
    found = dict.fromkeys(Path(r) if Path(r).is_absolute() else path.parent / r for r in refs if r)
    return [p for p in found if p.is_file()]  # a missing one destroys nothing: the loader names it


def _as_image_list(value: Any, source: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _fail(source, f"'image' must be a path, a list of paths or null, got {show(value)}",
                "Write e.g. \"image\": \"imgs/1.png\"")


def _parse_messages(raw: Any, base: Path, source: str) -> tuple[tuple[dict, ...], list[str], str | None]:
    """Normalise chat messages; returns (messages with bare image placeholders, image paths, answer).

    A final assistant turn is taken as the answer and removed from the prompt.
    """
    if not isinstance(raw, list) or not raw:
        raise _fail(source, "'messages' must be a non-empty list of {role, content}",
                    "See the data format in docs/data.md")
    messages: list[dict] = []
    paths: list[str] = []
    for turn in raw:
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise _fail(source, f"each message needs 'role' and 'content', got {show(turn)}",
                        "See the data format in docs/data.md")
        if turn["role"] not in ("system", "user", "assistant"):
            raise _fail(source, f"message role {show(turn['role'])} is not system, user or assistant",
                        "Use one of those roles")
        content = turn["content"]
        if isinstance(content, str):
            messages.append({"role": turn["role"], "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise _fail(source, "message 'content' must be a string or a list of parts",
                        "See the data format in docs/data.md")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image":
                ref = _part_image(part)
                if ref is not None:
                    paths.append(str(ref))
                parts.append({"type": "image"})
            else:
                raise _fail(source, f"unsupported message part {show(part)}",
                            "Use {\"type\": \"text\", \"text\": ...} or {\"type\": \"image\", \"image\": PATH}")
        messages.append({"role": turn["role"], "content": parts})
    answer = None
    if messages[-1]["role"] == "assistant":
        last = messages.pop()
        answer = "".join(p.get("text", "") for p in last["content"])
    if not any(m["role"] == "user" for m in messages):
        raise _fail(source, "'messages' holds no user turn before the assistant answer",
                    "Add a user turn")
    return tuple(messages), paths, answer


def parse_record(obj: Any, base: Path, source: str) -> Record:
    """Validate one decoded JSON object; raises DataError naming ``source``."""
    if not isinstance(obj, dict):
        raise _fail(source, "a record must be a JSON object", "Write one {...} object per line")
    domain = obj.get("domain")
    if not isinstance(domain, str) or not domain.strip():
        raise _fail(source, "missing or empty 'domain'",
                    "Give every record a domain label, e.g. \"domain\": \"math\"")
    rid = obj.get("id", source)
    images = _as_image_list(_image_value(obj), source)
    messages = None
    question = obj.get("question")
    answer = obj.get("answer")
    if "messages" in obj:
        messages, msg_images, msg_answer = _parse_messages(obj["messages"], base, source)
        images = msg_images + images
        answer = answer if answer is not None else msg_answer
    elif not isinstance(question, str) or not question.strip():
        raise _fail(source, "missing or empty 'question' (and no 'messages')",
                    "Give a \"question\" string or a \"messages\" list")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise _fail(source, f"'answer' must be a string or a number, got {show(answer)}",
                    "Write e.g. \"answer\": \"42\"")
    resolved = []
    for ref in images:
        path = Path(ref) if Path(ref).is_absolute() else (base / ref)
        if not path.is_file():
            raise _fail(source, f"image '{ref}' not found (looked for {path})",
                        "Image paths are relative to the JSONL file; fix the path or add the file")
        check_image(path, source)
        resolved.append(path.resolve())
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    return Record(id=str(rid), domain=domain.strip(), question=question,
                  answer=None if answer is None else str(answer), images=tuple(resolved),
                  messages=messages, source=source, extra=extra)


def load_records(paths: str | Path | Sequence[str | Path], require_answer: bool = False) -> list[Record]:
    """Read every record of one or more JSONL files, in order.

    Raises DataError (file and line named) on a malformed line, a missing image, an empty
    domain, a duplicate id, or — with ``require_answer`` — a record without an answer.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no data file given. Pass at least one --data FILE.jsonl")
    records: list[Record] = []
    seen: dict[str, str] = {}
    for p in paths:
        path = Path(p)
        if path.is_dir():
            raise DataError(f"{path}: is a directory. Pass a JSONL file to --data")
        if not path.is_file():
            raise DataError(f"{path}: data file not found. Check the path passed to --data")
        try:
            raw_lines = path.read_bytes().splitlines()
        except OSError as err:
            raise DataError(f"{path}: cannot read the data file ({err.strerror or err})") from None
        for lineno, raw in enumerate(raw_lines, start=1):
            source = f"{path}:{lineno}"
            try:  # a UTF-8 byte-order mark (Windows editors write one) is accepted on line 1
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise _fail(source, f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})",
                            "Save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _fail(source, f"malformed JSON ({err.msg} at column {err.colno})",
                            "Each line must be one complete JSON object") from None
            except RecursionError:
                raise _fail(source, "JSON nested too deeply", "Each line must be one flat record") from None
            rec = parse_record(obj, path.parent, source)
            if require_answer and rec.answer is None:
                raise _fail(source, "record has no 'answer'",
                            "Evaluation needs an answer on every record")
            if rec.id in seen:
                raise _fail(source, f"duplicate id '{rec.id}' (first at {seen[rec.id]})",
                            "Give every record a unique id")
            seen[rec.id] = source
            records.append(rec)
    if not records:
        raise DataError(f"{', '.join(map(str, paths))}: no records found. The file is empty")
    return records


def data_fingerprint(records: Iterable[Record]) -> str:
    """sha256 over every record's fields and image bytes: same data, same fingerprint."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.domain, r.question, r.answer, r.messages],
                            sort_keys=True).encode())
        for img in r.images:
            h.update(img.read_bytes())
    return h.hexdigest()[:16]


def _image_error(path: Path, source: str, err: BaseException) -> DataError:
    if isinstance(err, Image.DecompressionBombError):
        return DataError(f"{source}: image {path} is too large to decode safely ({err}). "
                         "Downscale it (PIL refuses images this large as a decompression-bomb guard)")
    return DataError(f"{source}: image {path} cannot be read ({type(err).__name__}: {err}). "
                     "Replace it with a valid PNG/JPEG file")


def check_image(path: Path, source: str = "") -> None:
    """Decode the image once (before any model is loaded); raises DataError naming the record
    if PIL cannot identify, decode (truncated file) or accept it (decompression-bomb guard)."""
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad file
        raise _image_error(path, source, err) from None


def load_image(path: Path, source: str = "") -> Image.Image:
    """Open an image as RGB; raises DataError naming the record if it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as err:  # noqa: BLE001 - truncated data, bombs, unknown formats, broken PNG chunks
        raise _image_error(path, source, err) from None


def chat_messages(record: Record, with_answer: bool = False) -> list[dict]:
    """The record as Hugging Face chat messages, with bare ``{"type": "image"}`` placeholders."""
    if record.messages is not None:
        messages = [dict(m, content=list(m["content"])) for m in record.messages]
        placeholders = sum(p["type"] == "image" for m in messages for p in m["content"])
        missing = len(record.images) - placeholders
        if missing > 0:  # top-level images without placeholders go first in the first user turn
            first_user = next(m for m in messages if m["role"] == "user")
            first_user["content"] = [{"type": "image"}] * missing + first_user["content"]
    else:
        content = [{"type": "image"} for _ in record.images]
        content.append({"type": "text", "text": record.question or ""})
        messages = [{"role": "user", "content": content}]
    if with_answer:
        if record.answer is None:
            raise DataError(f"{record.source}: record has no answer to append")
        messages.append({"role": "assistant", "content": [{"type": "text", "text": record.answer}]})
    return messages


def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


#: ``--prompt-format`` values. ``chat``: the tokenizer's chat template; ``plain``: the
#: template-free format of :func:`plain_prompt` (base models); ``auto``: chat when the
#: tokenizer (or processor) has a template, else plain.
PROMPT_FORMATS = ("auto", "chat", "plain")
#: attribute under which :func:`set_prompt_format` records a run's choice on its processor
_FORMAT_ATTR = "depthprune_prompt_format"


def has_chat_template(processor: Any) -> bool:
    """True if the processor or its tokenizer carries a chat template."""
    return bool(getattr(processor, "chat_template", None)
                or getattr(_tokenizer_of(processor), "chat_template", None))


def check_prompt_format(requested: str, model_id: Any = None) -> str:
    """``requested`` if it is one of :data:`PROMPT_FORMATS` (else ValueError), checked before
    any model loads: ``chat`` for a local checkpoint whose files declare no chat template is a
    DataError. Returns ``requested``."""
    if requested not in PROMPT_FORMATS:
        raise ValueError(f"--prompt-format {requested!r}: choose one of {', '.join(PROMPT_FORMATS)}")
    if requested == "chat" and model_id is not None and checkpoint_has_chat_template(model_id) is False:
        raise _no_template(model_id)
    return requested


def _no_template(model_id: Any) -> DataError:
    return DataError(f"{model_id}: --prompt-format chat, but its tokenizer has no chat template "
                     "(a base model?). Use --prompt-format plain (or auto)")


#: files of a checkpoint directory that hold a chat template (besides tokenizer_config.json)
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "additional_chat_templates")


def checkpoint_has_chat_template(model_id: Any) -> bool | None:
    """Whether local checkpoint ``model_id`` (a directory or a ``.gguf`` file) declares a chat
    template, read from its files without loading it; None when that cannot be told (a hub id,
    an unreadable file)."""
    path = Path(str(model_id)).expanduser()
    try:
        if path.is_file() and path.suffix.lower() == ".gguf":
            import gguf
            return "tokenizer.chat_template" in gguf.GGUFReader(str(path)).fields
        if not path.is_dir():
            return None
        if any((path / name).exists() for name in _TEMPLATE_FILES):
            return True
        configs = [path / "tokenizer_config.json", path / "processor_config.json"]
        return any(f.is_file() and json.loads(f.read_text()).get("chat_template") for f in configs)
    except (OSError, ValueError, AttributeError, ImportError):  # the loader reports a broken checkpoint
        return None


def set_prompt_format(processor: Any, requested: str = "auto", model_id: Any = "the model") -> str:
    """Decide how this run writes prompts for ``processor`` and record it on the processor,
    where :func:`render_prompt` and :func:`encode` read it. Returns "chat" or "plain".

    The one place the format is decided: ``auto`` is chat when there is a chat template, else
    plain. Raises DataError for ``chat`` on a tokenizer without a template.
    """
    check_prompt_format(requested)
    template = has_chat_template(processor)
    if requested == "chat" and not template:
        raise _no_template(model_id)
    chosen = "chat" if requested == "chat" or (requested == "auto" and template) else "plain"
    for owner in {id(o): o for o in (processor, _tokenizer_of(processor))}.values():
        setattr(owner, _FORMAT_ATTR, chosen)
    return chosen


def prompt_format(processor: Any) -> str:
    """The format :func:`set_prompt_format` chose for ``processor``; without one, the ``auto``
    rule (chat when there is a chat template, else plain)."""
    chosen = getattr(processor, _FORMAT_ATTR, None) or getattr(_tokenizer_of(processor), _FORMAT_ATTR, None)
    return chosen or ("chat" if has_chat_template(processor) else "plain")


def plain_prompt(record: Record, with_answer: bool = False) -> str:
    """The template-free prompt of base models: ``"Question: {question}\nAnswer:"`` (with the
    answer: ``"... Answer: {answer}"``). A system turn goes first as its own paragraph; earlier
    answered turns are ``"Question: ...\nAnswer: ...\n\n"``. Raises DataError for a record
    with images (no template places them)."""
    if record.images:
        raise DataError(f"{record.source}: the plain prompt format has no place for images. Use "
                        "--prompt-format chat with a model whose processor has a chat template")
    prompt = ""
    for m in chat_messages(record):
        text = "".join(p.get("text", "") for p in m["content"])
        if m["role"] == "system":
            prompt += f"{text}\n\n"
        elif m["role"] == "user":
            prompt += f"Question: {text}\nAnswer:"
        else:  # an earlier assistant turn answers the question before it
            prompt += f" {text}\n\n"
    if with_answer:
        if record.answer is None:
            raise DataError(f"{record.source}: record has no answer to append")
        prompt = f"{prompt} {record.answer}"
    return prompt


def render_prompt(processor: Any, record: Record, with_answer: bool = False) -> str:
    """The prompt text in this run's :func:`prompt_format`: through the model's chat template
    (generation prompt added unless ``with_answer``), or :func:`plain_prompt`."""
    if prompt_format(processor) == "plain":
        return plain_prompt(record, with_answer)
    tok = _tokenizer_of(processor)
    template_owner = processor if getattr(processor, "chat_template", None) else tok
    messages = chat_messages(record, with_answer)
    if template_owner is tok:  # a plain tokenizer's template expects string content
        messages = [{"role": m["role"],
                     "content": "".join(p.get("text", "") for p in m["content"])}
                    for m in messages]
    try:
        return template_owner.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not with_answer)
    except Exception as err:  # noqa: BLE001 - jinja errors, raise_exception() in templates
        raise DataError(f"{record.source}: the model's chat template cannot render this record "
                        f"({type(err).__name__}: {' '.join(str(err).split())}). Check its roles and "
                        "content (e.g. a template that wants alternating user/assistant turns)") from None


_kept: EncodingCache | None = None  # the cache encode() uses, inside a kept_encodings block


def kept_cache() -> EncodingCache | None:
    """The cache of the current :func:`kept_encodings` block (None outside one)."""
    return _kept


@contextlib.contextmanager
def kept_encodings(cache: EncodingCache | None) -> Iterator[None]:
    """Within the block, :func:`encode` returns ``cache``'s batches (and fills it); None: no cache."""
    global _kept
    outer, _kept = _kept, cache
    try:
        yield
    finally:
        _kept = outer


def encode(processor: Any, records: Sequence[Record], texts: Sequence[str] | None = None,
           with_answer: bool = False) -> Any:
    """Tokenise records (and load their images) into one left-padded batch of tensors.

    ``texts`` overrides the rendered prompts (one per record); images always come from the
    records. Raises DataError if a record has images but the model takes none. Inside
    :func:`kept_encodings`, a batch encoded before is returned again.
    """
    if texts is None:
        texts = [render_prompt(processor, r, with_answer) for r in records]
    if _kept is not None:
        images = tuple(str(p) for r in records for p in r.images)
        batch = _kept.get((id(processor), prompt_format(processor), tuple(texts), images),
                          lambda: _encode(processor, records, texts))
        # what a model computes from the images alone is kept under this key (the prompt and
        # the answered text of the same records share it): EncodingCache.derived
        batch.kept_images = (id(processor), images)
        return batch
    return _encode(processor, records, texts)


def _encode(processor: Any, records: Sequence[Record], texts: Sequence[str]) -> Any:
    images = [load_image(p, r.source) for r in records for p in r.images]
    tok = _tokenizer_of(processor)
    tok.padding_side = "left"  # in memory only: generation needs left padding
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if images:
        if processor is tok or not hasattr(processor, "image_processor"):
            bad = next(r for r in records if r.images)
            raise DataError(f"{bad.source}: record has an image but this model has no image "
                            "processor. Use a vision-language model or drop the image")
        try:
            return processor(text=list(texts), images=images, padding=True, return_tensors="pt")
        except (ValueError, TypeError, IndexError, RuntimeError) as err:  # e.g. an extreme aspect ratio
            where = records[0].source if len(records) == 1 else f"{records[0].source} .. {records[-1].source}"
            raise DataError(f"{where}: the model's processor cannot encode these records' images "
                            f"({' '.join(str(err).split())}). Check the images (size, aspect ratio)") from None
    if processor is tok:
        # a chat template already writes BOS and friends; plain text needs them added
        return tok(list(texts), padding=True, return_tensors="pt",
                   add_special_tokens=prompt_format(processor) == "plain")
    return processor(text=list(texts), padding=True, return_tensors="pt")


def batches(records: Sequence[Record], batch_size: int) -> Iterable[list[Record]]:
    """Consecutive slices of ``batch_size`` records."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    for i in range(0, len(records), batch_size):
        yield list(records[i:i + batch_size])


def cap_per_domain(records: Sequence[Record], max_samples: int | None) -> list[Record]:
    """The first ``max_samples`` records of each domain, file order kept."""
    if max_samples is None:
        return list(records)
    seen: dict[str, int] = {}
    kept = []
    for r in records:
        if seen.get(r.domain, 0) < max_samples:
            seen[r.domain] = seen.get(r.domain, 0) + 1
            kept.append(r)
    return kept


def domain_weights(domains: Sequence[str], domain: str | None, weights: dict[str, float] | None) -> dict[str, float]:
    """Domain -> weight of a calibration objective (SLEB's, compensation's): ``{domain: 1}``, else
    ``weights`` normalised to sum 1 with zero weights dropped (equal over ``domains`` if None).
    Raises RankError naming a domain that is not in ``domains``."""
    present = sorted(set(domains))
    if domain is not None:
        if domain not in present:
            raise RankError(f"domain '{domain}' is not in the calibration data; present: {', '.join(present)}")
        return {domain: 1.0}
    weights = weights if weights is not None else {d: 1.0 for d in present}
    unknown = sorted(set(weights) - set(present))
    if unknown:
        raise RankError(f"weights name domains {unknown} that are not in the calibration data; present: "
                        f"{', '.join(present)}")
    total = sum(weights.values())
    if not total > 0:
        raise RankError(f"weights {weights} are all zero; give at least one domain a positive weight")
    return {d: w / total for d, w in sorted(weights.items()) if w > 0}
