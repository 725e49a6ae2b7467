"""Shared fixtures. The tests are a package (``tests.helpers`` holds the tiny models, the CLI
checks and the study fixture); ``unit/`` needs no model, ``models/`` builds tiny random-init
models of real transformers classes, ``e2e/`` runs commands as typed, the bundled toy and the
real SmolLM2 GGUF (slow)."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    """A small two-domain calibration set with images, in the JSONL format."""
    import json
    d = tmp_path_factory.mktemp("calib")
    (d / "imgs").mkdir()
    rows = []
    for i in range(6):
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        ImageDraw.Draw(img).rectangle([4 * i % 20, 4, 4 * i % 20 + 10, 14], fill=(200, 30 * i, 0))
        img.save(d / "imgs" / f"{i}.png")
        domain = "math" if i % 2 else "general"
        q = "what is 3 plus 4 ?" if domain == "math" else "what colour is the shape ?"
        rows.append({"id": f"s{i}", "domain": domain, "image": f"imgs/{i}.png", "question": q,
                     "answer": "7" if domain == "math" else "red"})
    rows.append({"id": "t0", "domain": "math", "image": None, "question": "how many is 2 plus 2 ?",
                 "answer": "4"})
    (d / "calib.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d / "text.jsonl").write_text("\n".join(json.dumps(dict(r, image=None)) for r in rows) + "\n")
    return d
