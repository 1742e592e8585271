"""Model code keeps host and accelerator tensors apart, checked without an accelerator.

On a GPU, an operation that mixes a tensor on the device with one on the host fails, and `.numpy()`
of a device tensor fails; on a CPU both pass silently. Here the model's tensors, and everything
computed from them or created with an explicit `device=`, are tagged as "on the device", and any
operation that would fail on a GPU raises. This found the bugs that the first GPU run hit.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from captioner.stream.audio import load_audio
from captioner.stream.config import StreamConfig
from captioner.stream.engine import Engine
from captioner.tools.simulate import simulate
from captioner.tools.transcribe import TranscribeOptions, transcribe

TO_HOST = {"cpu", "tolist", "item", "__bool__", "__int__", "__float__", "__index__", "__len__", "__repr__",
           "__format__", "dim", "size", "numel", "data_ptr", "is_floating_point"}
ALLOWED_MIXED = {"__getitem__", "to", "copy_", "__set__"}  # indexing with host indices works on a GPU


def on_device(t: torch.Tensor) -> bool:
    return getattr(t, "_on_device", False)


class DeviceEmulation(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device = any(on_device(t) for t in tensors)
        if device and name == "numpy":
            raise AssertionError("numpy() of a device tensor")
        if device and name not in ALLOWED_MIXED:
            checked = tensors
            if name == "__setitem__":
                checked = [args[0]] + [a for a in args[2:3] if isinstance(a, torch.Tensor)]
            host = [tuple(t.shape) for t in checked if not on_device(t) and t.dim() > 0]
            if host:
                raise AssertionError(f"{name} mixes device tensors with host tensors of shapes {host}")
        out = func(*args, **kwargs)
        to_host = name == "cpu" or (name == "to" and "cpu" in [*args[1:], *kwargs.values()])
        if to_host and out is args[0]:
            out = out.clone()  # on a GPU this is a copy, not the same tensor
        tag = device and not to_host and name not in TO_HOST
        if name == "__getitem__":
            tag = on_device(args[0])
        if kwargs.get("device") is not None:
            tag = not isinstance(kwargs["device"], str)  # device=tensor.device, not an explicit "cpu"
        if name == "to" and not to_host and any(isinstance(a, torch.device) for a in [*args[1:], *kwargs.values()]):
            tag = True
        if tag:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    t._on_device = True
        return out


@pytest.fixture
def emulated(model):
    tensors = [*model.network.parameters(), *model.network.buffers()]
    for t in tensors:
        t._on_device = True
    yield model
    for t in tensors:
        del t._on_device
    model.network.decoder._int8_output = None  # made from tagged weights


@pytest.fixture(scope="module")
def speech(samples):
    return load_audio(samples["LJ001-0001"]["path"])[: 16000 * 5]


def test_offline_transcription_keeps_devices_apart(emulated, speech):
    with DeviceEmulation():
        for beam in (1, 5):
            assert transcribe(emulated, speech, TranscribeOptions(beam_size=beam, word_timestamps=True)).text


@pytest.mark.parametrize("strategy", ["window", "cached"])
def test_streaming_keeps_devices_apart(emulated, speech, strategy):
    class GreedyFinals(Engine):  # as a server behind real time runs them
        def run(self, jobs, final_beam=None):
            return super().run(jobs, 1 if strategy == "cached" else final_beam)

    with DeviceEmulation():
        streams, _ = simulate(GreedyFinals(emulated, StreamConfig(strategy=strategy)), [speech, speech[16000:]])
    assert all(stream.events for stream in streams)


def test_emulation_catches_mixing(emulated):
    with DeviceEmulation(), pytest.raises(AssertionError, match="mixes"):
        emulated.network.decoder.token_embedding(torch.tensor([[1, 2]]))
