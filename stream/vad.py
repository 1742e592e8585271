"""Voice activity from Silero VAD: one shared network, per-stream recurrent state."""

from __future__ import annotations

import functools
import threading
import warnings

import torch

from .audio import SAMPLE_RATE

__all__ = ["WINDOW_SAMPLES", "WINDOW_SECONDS", "VoiceActivity"]

WINDOW_SAMPLES = 512  # Silero's window at 16 kHz (32 ms)
WINDOW_SECONDS = WINDOW_SAMPLES / SAMPLE_RATE
CONTEXT_SAMPLES = 64  # samples of the previous window Silero prepends
_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _network() -> torch.jit.ScriptModule:
    """The packaged Silero network (TorchScript); loaded once per process."""
    threads = torch.get_num_threads()
    with _lock, warnings.catch_warnings():
        # silero-vad ships TorchScript; torch >= 2.10 calls torch.jit.load deprecated on every start-up
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
        import silero_vad  # its import sets torch to 1 thread: put the count back

        model = silero_vad.load_silero_vad()
    torch.set_num_threads(threads)
    return model._model  # the stateless forward(x with context, state) -> (probability, state)


class VoiceActivity:
    """Speech probability of each 32 ms window of a 16 kHz stream, in order."""

    def __init__(self) -> None:
        self._network = _network()
        self._state = torch.zeros(2, 1, 128)
        self._context = torch.zeros(1, CONTEXT_SAMPLES)
        self._pending = torch.zeros(0)
        self.n_windows = 0  # windows scored so far

    def push(self, pcm: torch.Tensor) -> list[float]:
        """Add samples; return the probabilities of the windows they complete."""
        self._pending = torch.cat([self._pending, pcm.float()])
        n = len(self._pending) // WINDOW_SAMPLES
        probabilities = []
        with torch.inference_mode():
            for i in range(n):
                window = self._pending[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES][None]
                out, self._state = self._network(torch.cat([self._context, window], dim=1), self._state)
                self._context = window[:, -CONTEXT_SAMPLES:]
                probabilities.append(float(out))
        self._pending = self._pending[n * WINDOW_SAMPLES :]
        self.n_windows += n
        return probabilities
