"""Shared fixtures: the real default model, sample speech, and the wider evaluation set when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SHARED_EVAL = ROOT.parent / "shared" / "eval"


def sample_manifest() -> list[dict]:
    return [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def samples() -> dict[str, dict]:
    """Sample clips by file stem, with absolute audio paths."""
    return {Path(e["audio"]).stem: {**e, "path": SAMPLES / e["audio"]} for e in sample_manifest()}


@pytest.fixture(scope="session")
def shared_eval() -> Path:
    """../shared/eval (76 clips); tests that need it skip in a plain clone, which does not have it."""
    if not (SHARED_EVAL / "manifest.jsonl").is_file():
        pytest.skip("../shared/eval is not present (a plain clone has only samples/)")
    return SHARED_EVAL


@pytest.fixture(scope="session")
def model():
    """The default tiny.en at the default CPU dtype."""
    from captioner.stream.checkpoint import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def model_f32():
    from captioner.stream.checkpoint import load_model

    return load_model(device="cpu", dtype=torch.float32)
