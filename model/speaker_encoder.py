"""The speaker-embedding network: GE2E's speaker encoder (Wan et al. 2018), as resemblyzer trained it.

Three LSTM layers of 256 over 40-band power mel frames (25 ms windows every 10 ms at 16 kHz), the
last layer's final state through a linear layer and a ReLU, L2-normalised: one 256-value speaker
embedding per window of speech. The weights are those of `resemblyzer/pretrained.pt` (Apache-2.0,
resemble-ai/Resemblyzer 0.1.4, where the network is called `VoiceEncoder`), kept in model/weights/
with their licence: loading them needs neither that package nor its dependencies, and nothing is
fetched at run time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ModelError

__all__ = ["N_SPEAKER_MELS", "SPEAKER_SAMPLE_RATE", "SpeakerEncoder", "SPEAKER_ENCODER_WEIGHTS",
           "load_speaker_encoder"]

N_SPEAKER_MELS = 40
SPEAKER_SAMPLE_RATE = 16000
HIDDEN = 256
N_LAYERS = 3
SPEAKER_ENCODER_WEIGHTS = Path(__file__).resolve().parent / "weights" / "speaker_encoder.pt"
SPEAKER_ENCODER_WEIGHTS_SHA256 = "b3c4fd7e3cdd48d165272064ee358d26ed983d1e337cc820927ecbb7aeb2d97d"


class SpeakerEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_SPEAKER_MELS, HIDDEN, N_LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, mels: Tensor) -> Tensor:
        """Embeddings (batch, 256), unit length, of power mel windows (batch, n_frames, 40)."""
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-8)


def load_speaker_encoder(path: str | Path = SPEAKER_ENCODER_WEIGHTS) -> SpeakerEncoder:
    """The speaker encoder with its weights from a local file, in float32 on the CPU, for inference.

    Raises ModelError for a missing or corrupt file, or one whose tensors do not fit the network."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read the speaker encoder's weights {path}: {e.strerror}") from e
    if path == SPEAKER_ENCODER_WEIGHTS and hashlib.sha256(data).hexdigest() != SPEAKER_ENCODER_WEIGHTS_SHA256:
        raise ModelError(f"{path} is corrupt: its SHA-256 is not the shipped weights'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for a damaged file
        raise ModelError(f"{path} is not a speaker encoder checkpoint: {e}") from e
    encoder = SpeakerEncoder()
    expected = {name: tuple(t.shape) for name, t in encoder.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()} if isinstance(state, dict) else {}
    if found != expected:
        raise ModelError(f"{path} does not hold the speaker encoder's {len(expected)} tensors")
    encoder.load_state_dict(state)
    return encoder.eval().requires_grad_(False)
