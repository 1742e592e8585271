"""Offline transcription on real speech: text, segments, word times, search variants."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from whisper.timing import dtw_cpu

from captioner.decoder.decoding import DecodingOptions, DecodingRow
from captioner.decoder.timing import alignment_from_scores, dtw, median_filter
from captioner.stream.audio import load_audio
from captioner.stream.features import log_mel_spectrogram
from captioner.tools.evaluate import word_errors
from captioner.tools.transcribe import TranscribeOptions, transcribe


@pytest.fixture(scope="module")
def two_cities(samples):
    return load_audio(samples["two_cities"]["path"])


def test_two_cities_greedy(model, two_cities, samples):
    """Greedy decoding of the 44 s reading says what the reader says, in ordered segments."""
    result = transcribe(model, two_cities, TranscribeOptions(beam_size=1))
    text = result.text.lower()
    for phrase in ["it was the best of times", "age of foolishness", "spring of hope", "winter of despair"]:
        assert phrase in text
    assert word_errors(samples["two_cities"]["text"], result.text).wer < 0.08
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and all(s.end >= s.start for s in result.segments)
    assert result.segments[-1].end <= 44.5


def test_beam_search(model, samples):
    """Beam 5 transcribes a LibriSpeech test-other clip about as well as its reference."""
    clip = samples["1688-142285-0000"]
    text = transcribe(model, load_audio(clip["path"]), TranscribeOptions(beam_size=5)).text
    assert word_errors(clip["text"], text).wer < 0.25


def test_word_timestamps(model, two_cities):
    """Word times are ordered, inside the audio, and put a known word where it is spoken."""
    result = transcribe(model, two_cities, TranscribeOptions(beam_size=1, word_timestamps=True))
    words = [w for s in result.segments for w in s.words]
    assert len(words) > 100
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    assert all(0 <= w.start <= w.end <= 44.5 for w in words)
    wisdom = next(w for w in words if "wisdom" in w.word)
    assert 5.0 < wisdom.start < 8.5  # "it was the age of wisdom" is spoken about 6-7 s in
    assert all(0 <= w.probability <= 1 for w in words)


def test_batched_decode_equals_single(model_f32, samples):
    """Two clips decoded in one padded batch give the tokens each gets alone (the exact model: int8 layers quantise
    each call's activations on one scale, so the rows sharing a call move a near-tie's rounding)."""
    model = model_f32
    mels = [log_mel_spectrogram(load_audio(samples[name]["path"]))[:, :1000] for name in ["LJ001-0001", "1688-142285-0000"]]
    frames = [m.shape[1] + 400 + m.shape[1] % 2 for m in mels]  # audio + 4 s of pad, even
    width = max(frames)
    batch = torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in mels])
    n_frames = torch.tensor(frames)
    memory = model.encode(batch, n_frames)
    batched = model.decode(memory, [DecodingRow()] * len(mels), DecodingOptions(), memory_lengths=n_frames // 2)
    for i, mel in enumerate(mels):
        alone = model.encode(torch.nn.functional.pad(mel, (0, frames[i] - mel.shape[1]))[None])
        single = model.decode(alone, [DecodingRow()], DecodingOptions())[0]
        assert batched[i].tokens == single.tokens


def test_beams_share_one_encoder_output(model, samples):
    """Rows decoding one encoder output share its cross-attention keys/values: the same states as copies."""
    mel = log_mel_spectrogram(load_audio(samples["LJ001-0001"]["path"]))[:, :600]
    memory = model.encode(torch.nn.functional.pad(mel, (0, 400))[None])
    decoder = model.network.decoder
    sot, no_timestamps = model.tokenizer.sot, model.tokenizer.no_timestamps
    tokens = torch.tensor([[sot, no_timestamps, 440], [sot, no_timestamps, 317], [sot, no_timestamps, 1002]])
    valid = torch.tensor([memory.shape[1] - 50])  # the last 50 positions masked out
    with torch.inference_mode():
        shared = decoder.new_cache(memory, valid).select(torch.tensor([0, 0, 0]))
        copied = decoder.new_cache(memory.expand(3, -1, -1).contiguous(), valid.expand(3))
        assert shared.cross[0][0].shape[0] == 1 and shared.memory_mask is not None
        (a, wa), (b, wb) = decoder(tokens, shared, want_weights=True), decoder(tokens, copied, want_weights=True)
    torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(wa[-1], wb[-1], atol=1e-2, rtol=1e-2)


def test_dtw_matches_openai_whisper():
    """The vectorised DTW takes the same path as openai-whisper's reference implementation."""
    rng = np.random.default_rng(0)
    for shape in [(5, 40), (30, 200), (1, 7)]:
        cost = rng.standard_normal(shape)
        rows, cols = dtw(cost)
        ref_rows, ref_cols = dtw_cpu(cost)
        assert np.array_equal(rows, ref_rows) and np.array_equal(cols, ref_cols)


def test_int8_greedy_logits_pick_the_same_tokens(model, two_cities):
    """The int8 output projection of greedy steps on CPU: the same choices as bfloat16 logits, on real speech."""
    decoder = model.network.decoder
    with torch.inference_mode():
        memory = model.encode(torch.nn.functional.pad(log_mel_spectrogram(two_cities)[:, :2000], (0, 400))[None])
        result = model.decode(memory, [DecodingRow()], DecodingOptions())[0]
        tokens = torch.tensor([[model.tokenizer.sot_sequence[0], model.tokenizer.no_timestamps] + result.tokens])
        hidden, _ = decoder(tokens, decoder.new_cache(memory))
        exact, fast = decoder.logits(hidden[0]), decoder.greedy_logits(hidden[0])
    agree = (exact.argmax(-1) == fast.argmax(-1)).float().mean()
    assert len(result.tokens) > 20 and agree == 1.0
    assert (exact - fast).abs().max() < 0.05 * exact.abs().max()


def test_decoding_with_a_draft_equals_greedy_search_and_aligns_with_its_own_scores(model_f32, samples):
    """A greedy final verifies the last partial as a draft: whatever the draft, the tokens, end, no-speech
    probability and average log-probability of plain greedy search, and the same word times as an alignment pass.
    (With a float decoder: int8 layers quantise activations per call, so a pass of many tokens and steps of one
    round differently.)"""
    model = model_f32
    mel = log_mel_spectrogram(load_audio(samples["LJ001-0001"]["path"]))[:, :800]
    n_frames = mel.shape[1]
    tokenizer = model.tokenizer
    with torch.inference_mode():
        memory = model.encode(torch.nn.functional.pad(mel, (0, 400))[None])
        plain = model.decode(memory, [DecodingRow(no_end_before_word=True)], DecodingOptions())[0]
        said = plain.tokens
        drafts = [said, said[:6] + tokenizer.encode(" banana split"), [], said + tokenizer.encode(" more")]
        found = [model.decode_drafts(memory, [DecodingRow(draft=draft, max_new_tokens=60, no_end_before_word=True)],
                                     exact=True)[0]
                 for draft in drafts]
        aligned = model.align(memory, [n_frames], [said])[0]
    assert len(said) > 10
    for result in found:
        assert result.tokens == said and result.finished
        assert abs(result.no_speech_prob - plain.no_speech_prob) < 1e-3
        assert abs(result.avg_logprob - plain.avg_logprob) < 0.05
    assert found[0].n_steps == 0 and found[2].n_steps == len(said)  # a right draft needs no step, none needs all
    own = alignment_from_scores(tokenizer, said, found[1].scores[:, :, : n_frames // 2].float(), [1.0] * len(said))
    assert [w.word for w in own.words] == [w.word for w in aligned.words]
    assert max(abs(a.start - b.start) + abs(a.end - b.end) for a, b in zip(own.words, aligned.words)) <= 0.04


def test_median_filter_matches_scipy_style_reference():
    x = torch.randn(2, 3, 50)
    expected = torch.stack([
        torch.tensor([np.median(np.pad(row.numpy(), 3, mode="reflect")[j : j + 7]) for j in range(50)])
        for row in x.reshape(-1, 50)
    ]).reshape(x.shape)
    assert torch.allclose(median_filter(x, 7), expected.float())


@pytest.mark.slow  # it loads the model or starts servers itself
def test_cli_transcribe_formats(samples):
    """The command prints text by default, and the format --format names (every format's rendering of a
    transcript: test_formats.py)."""
    path = str(samples["LJ001-0001"]["path"])

    def run(*extra: str) -> str:
        out = subprocess.run([sys.executable, "-m", "captioner.tools.cli", "transcribe", path, "--beam", "1", *extra],
                             capture_output=True, text=True, check=True)
        return out.stdout

    assert "printing" in run().lower()
    assert json.loads(run("--format", "json"))["segments"]


def test_keywords_favour_their_terms_offline_and_streamed(model_f32, samples, tmp_path):
    """tiny.en in float32 writes "shopboy" offline and hears "shock boy" streamed; with "shop boy" as a keyword,
    both say it (`captioner transcribe --keywords-file`: one term per line, # comments). The exact model, as the
    near-tie it starts from is one that int8 layers (on a CPU without bfloat16) may break either way."""
    from captioner.stream.jobs import Speech
    from captioner.tools.simulate import stream_file

    path = samples["1688-142285-0001"]["path"]
    audio = load_audio(path)
    assert "shop boy" not in transcribe(model_f32, audio).text
    assert "shock boy" in stream_file(model_f32, audio, "window", 100, "text")
    assert "shop boy" in stream_file(model_f32, audio, "window", 100, "text", Speech(keywords=("shop boy",)))
    keywords = tmp_path / "keywords.txt"
    keywords.write_text("# the room's terms\nshop boy\n\n")
    out = subprocess.run([sys.executable, "-m", "captioner.tools.cli", "transcribe", str(path), "--keywords-file",
                          str(keywords)], capture_output=True, text=True, check=True)
    assert "shop boy" in out.stdout


def test_speaker_labels_offline_and_streamed(model, two_voices):
    """Two voices, three turns: S1, S2, S1 on the words of a transcript (`captioner transcribe --diarize`) and in
    the voice tags of a streamed file's WebVTT (`--stream --diarize`)."""
    from client import speaker_of_turns

    from captioner.stream.jobs import Speech
    from captioner.tools.simulate import stream_file
    from captioner.tools.transcribe import label_speakers

    pcm, turns = two_voices
    audio = torch.from_numpy(np.frombuffer(pcm, np.int16).astype(np.float32) / 32768)
    transcript = label_speakers(transcribe(model, audio, TranscribeOptions(beam_size=1, word_timestamps=True)), audio)
    words = [{"start": w.start, "end": w.end, "speaker": w.speaker} for s in transcript.segments for w in s.words]
    assert speaker_of_turns(words, turns) == [{"S1"}, {"S2"}, {"S1"}]
    vtt = stream_file(model, audio, "window", 100, "vtt", Speech(diarize=True))
    cues = [line.split(">", 1)[0][3:] for line in vtt.splitlines() if line.startswith("<v ")]
    assert [s for i, s in enumerate(cues) if i == 0 or s != cues[i - 1]] == ["S1", "S2", "S1"], vtt


@pytest.mark.slow  # it loads the model or starts servers itself
def test_cli_eval(tmp_path):
    """`captioner eval` scores the sample manifest and writes a results file."""
    from conftest import SAMPLES

    out = tmp_path / "results.json"
    subprocess.run([sys.executable, "-m", "captioner.tools.cli", "eval", str(SAMPLES / "manifest.jsonl"),
                    "--beam", "1", "--limit", "2", "--out", str(out)], check=True, capture_output=True)
    results = json.loads(out.read_text())
    assert results["summary"]["clips"] == 2
    assert results["summary"]["wer"] < 0.3
