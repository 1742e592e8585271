"""Checkpoint loaders: the same logits as the reference libraries, and clear errors for bad files."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from captioner.model.catalog import MODELS, locate
from captioner.model.ct2 import load_ct2, read_ct2
from captioner.model.errors import ModelError
from captioner.model.loading import cpu_has_bfloat16, default_model_path, load_model

SMALL = dict(n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
             n_vocab=51864, n_text_ctx=64, n_text_state=64, n_text_head=2, n_text_layer=2)
TOKENS = [[50257, 50362, 464, 2068, 7586, 21831], [50257, 50362, 1318, 318, 257, 1332]]


def _our_logits(model, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        memory = model.encode(mel)
        decoder = model.network.decoder
        hidden, _ = decoder(tokens, decoder.new_cache(memory))
        return decoder.logits(hidden)


def _randomize(module: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


@pytest.mark.slow  # it loads the model or starts servers itself
def test_openai_checkpoint_gives_reference_logits(tmp_path):
    """A random openai-whisper model saved as .pt loads with the same logits (1e-4)."""
    import whisper.model

    reference = whisper.model.Whisper(whisper.model.ModelDimensions(**SMALL))
    _randomize(reference)
    path = tmp_path / "small.pt"
    torch.save({"dims": SMALL, "model_state_dict": reference.state_dict()}, path)
    ours = load_model(path, device="cpu", dtype=torch.float32, int8="off")  # the weights as read, exactly
    mel = torch.randn(2, 80, 100)
    tokens = torch.tensor(TOKENS)
    with torch.no_grad():
        expected = reference(mel, tokens)
    assert (_our_logits(ours, mel, tokens) - expected).abs().max() < 1e-4


@pytest.mark.slow  # it loads the model or starts servers itself
def test_hugging_face_checkpoint_gives_reference_logits(tmp_path):
    """A random transformers WhisperForConditionalGeneration directory loads with the same logits (1e-4)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=256,
        max_source_positions=50, max_target_positions=64,
    )
    reference = WhisperForConditionalGeneration(config).eval()
    _randomize(reference)
    reference.save_pretrained(tmp_path)
    shutil.copy(default_model_path() / "tokenizer.json", tmp_path / "tokenizer.json")
    ours = load_model(tmp_path, device="cpu", dtype=torch.float32, int8="off")
    mel = torch.randn(2, 80, 100)
    tokens = torch.tensor(TOKENS)
    with torch.no_grad():
        expected = reference(input_features=mel, decoder_input_ids=tokens).logits
    assert (_our_logits(ours, mel, tokens) - expected).abs().max() < 1e-4


@pytest.mark.slow  # it loads the model or starts servers itself
def test_default_model_is_tiny_en():
    """With no path the bundled tiny.en loads, named, hashed and with its alignment heads."""
    model = load_model(device="cpu")
    assert model.name == "tiny.en"
    assert model.dims.n_audio_layer == 4 and model.dims.n_vocab == 51864
    assert len(model.alignment_heads) == 8
    assert model.dtype == (torch.bfloat16 if cpu_has_bfloat16() else torch.float32)
    assert len(model.checksum) == 12


def test_ct2_reader_reads_every_variable():
    """All 148 variables and the tied projection alias come out of model.bin."""
    variables, digest = read_ct2(default_model_path() / "model.bin")
    assert digest == MODELS["tiny.en"].sha256
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)


@pytest.fixture
def ct2_copy(tmp_path):
    """A copy of the default CTranslate2 directory that a test may damage."""
    target = tmp_path / "model"
    shutil.copytree(default_model_path(), target)
    return target


def test_model_bin_in_parts_reads_as_one_file_and_is_checked_against_its_digest(tmp_path):
    """The named models' packaging: model.bin split at arbitrary bytes, read in order, hashed while read."""
    data = (default_model_path() / "model.bin").read_bytes()
    cuts = [0, 1000, 1001, 5_000_000, len(data) // 2 + 7, len(data)]  # inside headers and tensors, one of 1 byte
    parts = []
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:]), 1):
        parts.append(tmp_path / f"model.bin.part{i}")
        parts[-1].write_bytes(data[lo:hi])
    whole, digest = read_ct2(default_model_path() / "model.bin")
    split, split_digest = read_ct2(parts)
    assert split_digest == digest == MODELS["tiny.en"].sha256
    assert split.keys() == whole.keys() and all(torch.equal(split[k], whole[k]) for k in whole)
    assert not list(tmp_path.glob("model.bin"))  # never joined on disk
    with pytest.raises(ModelError, match="SHA-256"):
        load_ct2(default_model_path(), "tiny.en", parts, sha256="0" * 64)
    with pytest.raises(ModelError, match="truncated"):
        read_ct2(parts[:-1])


def test_named_models_resolve_or_say_how_to_install_them(monkeypatch):
    from captioner.model import catalog

    monkeypatch.setitem(catalog.MODELS, "large", catalog.NamedModel("large", 99, ("no_such_package",), "large", None))
    with pytest.raises(ModelError, match=r"not installed; install it with: pip install 'captioner\[large\]'"):
        load_model("large", device="cpu")
    assert locate("tiny.en").directory == default_model_path()
    with pytest.raises(ModelError, match="incomplete"):
        load_model("small", device="cpu")
    with pytest.raises(ModelError, match="no model at .*captioner models"):
        load_model("medium", device="cpu")
    try:
        found = locate("base")
    except ModelError as e:
        assert "pip install 'captioner[base]'" in str(e)
    else:
        assert [p.name for p in found.parts] == ["model.bin.part1", "model.bin.part2"]
        assert found.size == 145_217_607


def test_truncated_model_bin_is_a_clear_error(ct2_copy):
    data = (ct2_copy / "model.bin").read_bytes()
    (ct2_copy / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        load_model(ct2_copy, device="cpu")


def test_corrupt_model_bin_is_a_clear_error(ct2_copy):
    data = bytearray((ct2_copy / "model.bin").read_bytes())
    data[0:4] = b"\x63\x00\x00\x00"  # binary version 99
    (ct2_copy / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="version 99"):
        load_model(ct2_copy, device="cpu")
    data[0:4] = b"\x06\x00\x00\x00"
    data[40:48] = b"\xff" * 8  # inside the first variable's header
    (ct2_copy / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ModelError):
        load_model(ct2_copy, device="cpu")


def test_missing_file_is_a_clear_error(ct2_copy):
    (ct2_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="tokenizer.json is missing"):
        load_model(ct2_copy, device="cpu")


def test_wrong_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no model at"):
        load_model(tmp_path / "nowhere", device="cpu")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a Whisper checkpoint"):
        load_model(tmp_path / "notes.txt", device="cpu")


def test_bad_pt_file_is_a_clear_error(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="not a readable openai-whisper checkpoint"):
        load_model(tmp_path / "broken.pt", device="cpu")


def test_cli_reports_a_bad_model_in_one_line(ct2_copy, samples):
    """The command line prints one error line and no traceback."""
    (ct2_copy / "model.bin").write_bytes(b"\x06\x00\x00\x00")
    result = subprocess.run(
        [sys.executable, "-m", "captioner.tools.cli", "transcribe", str(samples["LJ001-0001"]["path"]),
         "--model", str(ct2_copy)],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("captioner: error:")
    assert len(result.stderr.strip().splitlines()) == 1
