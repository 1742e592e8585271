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
    """Speech probability of each 32 ms window of a 16 kHz stream, in order.

    Silero's recurrent state adapts to the level of what it has heard: after loud speech, a speaker 40 dB
    quieter goes unheard for 10-30 s (a FLEURS clip at -64 dBFS after an LJ Speech one: no window above 0.13,
    where alone 81 % of its windows are speech). So after `reset_s` of windows below `quiet` the state starts
    afresh, as at the start of a stream: the next speech is judged on its own.
    """

    def __init__(self, reset_s: float = 0.0, quiet: float = 0.35) -> None:
        """reset_s: non-speech (windows scored below quiet) after which the recurrent state resets (0: never)."""
        self._network = _network()
        self._state = torch.zeros(2, 1, 128)
        self._context = torch.zeros(1, CONTEXT_SAMPLES)
        self._pending = torch.zeros(0)
        self._reset_windows = round(reset_s / WINDOW_SECONDS) if reset_s > 0 else 0
        self._quiet = quiet
        self._quiet_windows = 0  # consecutive windows below quiet
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
                self._quiet_windows = self._quiet_windows + 1 if probabilities[-1] < self._quiet else 0
                if self._reset_windows and self._quiet_windows >= self._reset_windows:
                    self._state, self._quiet_windows = torch.zeros(2, 1, 128), 0
        self._pending = self._pending[n * WINDOW_SAMPLES :]
        self.n_windows += n
        return probabilities
