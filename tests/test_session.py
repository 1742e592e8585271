"""The streaming session on real speech: determinism, invariants, endpointing, limits, both encoder strategies."""

from __future__ import annotations

import random

import pytest
import soundfile
import torch
import torchaudio.functional

from captioner.encoder.streaming import EncoderCache, encode_after_context, encode_cached
from captioner.stream.audio import load_audio
from captioner.stream.config import StreamConfig
from captioner.stream.engine import Engine
from captioner.stream.events import Final, Partial, event_to_dict
from captioner.stream.jobs import SegmentCache, UpdateJob
from captioner.stream.session import Session
from captioner.tools.evaluate import word_errors


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model)


@pytest.fixture(scope="module")
def lj(samples):
    return load_audio(samples["LJ001-0001"]["path"])


def stream(engine: Engine, audio: torch.Tensor, sizes, rate: int = 16000) -> list:
    """Feed audio in chunks of the given sizes (cycled), then end; return all events."""
    session = Session.for_engine(engine, rate)
    events, start, i = [], 0, 0
    while start < len(audio):
        size = sizes[i % len(sizes)]
        events += session.feed(audio[start : start + size])
        start += size
        i += 1
    return events + session.end()


def finals_text(events: list) -> str:
    return " ".join(e.text for e in events if isinstance(e, Final))


def check_invariants(events: list) -> None:
    """Finals once per segment and last for it; stable text only grows and starts the final; partial text starts with stable."""
    finals = {}
    stable: dict[int, str] = {}
    for event in events:
        assert event.segment not in finals, "an event after its segment's final"
        if isinstance(event, Final):
            finals[event.segment] = event
            assert event.text.startswith(stable.get(event.segment, "")), "the final contradicts stable text"
            assert all(a.start <= b.start for a, b in zip(event.words, event.words[1:]))
            if event.words:
                assert event.start == event.words[0].start and event.end == event.words[-1].end
        else:
            assert event.text.startswith(event.stable)
            assert event.stable.startswith(stable.get(event.segment, "")), "stable text shrank or changed"
            stable[event.segment] = event.stable
    assert set(stable) <= set(finals), "a segment without its final"
    assert sorted(finals) == list(range(len(finals)))


def test_same_events_whatever_the_chunking(model_f32, lj):
    """10 ms, 100 ms, 1 s and random chunks give identical events (over the clip's first 5 s), with the exact model:
    int8 layers (on a CPU without bfloat16) round a word's probability differently in its third decimal."""
    engine = Engine(model_f32)
    audio = lj[: 16000 * 5]
    reference = stream(engine, audio, [1600])
    assert finals_text(reference)
    rng = random.Random(7)
    for sizes in ([160], [16000], [rng.randint(1, 12000) for _ in range(50)]):
        assert stream(engine, audio, sizes) == reference


def test_invariants_and_text(engine, lj, samples):
    events = stream(engine, lj, [1600])
    check_invariants(events)
    assert any(isinstance(e, Partial) and e.stable for e in events)
    text = finals_text(events)
    assert word_errors(samples["LJ001-0001"]["text"], text).wer < 0.15
    assert "exhibition" in text.lower()  # the last word: end() loses no tail
    message = event_to_dict(events[-1])
    assert set(message) == {"type", "segment", "text", "start", "end", "words", "language"}
    assert message["type"] == "final" and message["language"] == "en"
    assert set(message["words"][0]) == {"word", "start", "end", "probability"}


def test_finals_keep_stable_words_on_a_long_reading(engine, samples):
    """44 s of continuous reading: several segments, every invariant, the whole text."""
    events = stream(engine, load_audio(samples["two_cities"]["path"]), [3200])
    check_invariants(events)
    finals = [e for e in events if isinstance(e, Final)]
    assert len(finals) >= 3
    assert word_errors(samples["two_cities"]["text"], finals_text(events)).wer < 0.12
    assert all(a.end <= b.start + 0.5 for a, b in zip(finals, finals[1:]))


@pytest.mark.parametrize("kind", ["silence", "noise", "clicks"])
def test_no_captions_for_non_speech(engine, kind):
    """Digital silence, white noise and clicks produce no events at all."""
    n = 16000 * 6
    if kind == "silence":
        audio = torch.zeros(n)
    elif kind == "noise":
        audio = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.1
    else:
        audio = torch.zeros(n)
        audio[::8000] = 0.9
        audio[1::8000] = -0.9
    assert stream(engine, audio, [1600]) == []


def test_narrow_band_8k_speech(engine, samples, tmp_path):
    """8 kHz telephone-band audio, streamed at its own rate, is transcribed."""
    audio = load_audio(samples["1688-142285-0000"]["path"])
    narrow = torchaudio.functional.resample(audio, 16000, 8000)
    events = stream(engine, narrow, [800], rate=8000)
    check_invariants(events)
    assert word_errors(samples["1688-142285-0000"]["text"], finals_text(events)).wer < 0.35


def test_any_input_rate_gives_the_same_finals(engine, samples):
    """A 22.05 kHz stream, resampled inside the session, gives what the resampled file gives."""
    raw, rate = soundfile.read(samples["LJ001-0001"]["path"], dtype="float32")
    at_rate = finals_text(stream(engine, torch.from_numpy(raw), [2205], rate=rate))
    assert at_rate == finals_text(stream(engine, load_audio(samples["LJ001-0001"]["path"]), [1600]))


def test_flush_forces_a_final(engine, lj):
    """A flush mid-speech finalises at once; speech after it opens a new segment."""
    session = Session.for_engine(engine)
    events = session.feed(lj[: 16000 * 4])
    flushed = session.flush()
    assert [type(e) for e in flushed] == [Final]
    events += flushed + session.feed(lj[16000 * 4 :]) + session.end()
    check_invariants(events)
    assert len([e for e in events if isinstance(e, Final)]) == 2


def test_max_segment_length_cuts_at_a_stable_word(model, samples):
    """With 5 s segments, a 15 s utterance is cut into several, none much longer, text intact."""
    engine = Engine(model, StreamConfig(max_segment_s=5.0))
    audio = load_audio(samples["1688-142285-0000"]["path"])
    events = stream(engine, audio, [1600])
    check_invariants(events)
    finals = [e for e in events if isinstance(e, Final)]
    assert len(finals) >= 3
    assert all(f.end - f.start <= 5.6 for f in finals)
    assert word_errors(samples["1688-142285-0000"]["text"], finals_text(events)).wer < 0.3


def test_batched_sessions_equal_separate_ones(engine, samples):
    """Three sessions whose jobs run in shared batches give each the events it gets alone."""
    audios = [load_audio(samples[name]["path"])[: 16000 * 8] for name in ["LJ001-0001", "1688-142285-0000", "two_cities"]]
    alone = [finals_text(stream(engine, audio, [1600])) for audio in audios]
    sessions = [Session.for_engine(engine) for _ in audios]
    events: list[list] = [[] for _ in audios]
    for start in range(0, 16000 * 8 + 1600, 1600):
        for session, audio in zip(sessions, audios):
            if start < len(audio):
                session.push(audio[start : start + 1600])
            elif not session.ended:
                session.push_end()
        while due := [(i, job) for i, s in enumerate(sessions) if (job := s.next_job()) is not None]:
            for (i, _), result in zip(due, engine.run([job for _, job in due])):
                events[i] += sessions[i].complete(result)
    assert [finals_text(e) for e in events] == alone


def test_cached_strategy(model, lj, samples):
    """The cached-state encoder strategy streams correct text under the same invariants."""
    events = stream(Engine(model, StreamConfig(strategy="cached")), lj, [1600])
    check_invariants(events)
    assert word_errors(samples["LJ001-0001"]["text"], finals_text(events)).wer < 0.2


def block_causal_reference(encoder, mel: torch.Tensor, tail: int, block: torch.Tensor) -> torch.Tensor:
    """One plain pass over mel plus `tail` positions of 0.0 frames, position i attending to blocks <= block[i]."""
    total = mel.shape[1] // 2 + tail
    mask = block[None, :] <= block[:, None]  # (query, key): keys of earlier blocks or the own one
    full = torch.nn.functional.pad(mel, (0, 2 * tail))
    x = torch.nn.functional.gelu(encoder.conv1(full[None]))
    x = torch.nn.functional.gelu(encoder.conv2(x)).transpose(1, 2) + encoder.positional_embedding[:total]
    for layer in encoder.blocks:
        x = layer(x, mask[None, None])
    return encoder.ln_post(x)[0]


def test_cached_encoder_equals_block_causal_reference(model_f32, lj):
    """Chunk by chunk with caches equals one pass with a block-causal attention mask (plain reference)."""
    from captioner.stream.features import log_mel_spectrogram

    encoder = model_f32.network.encoder
    mel = log_mel_spectrogram(lj)[:, :530]  # 265 positions: two 100-position chunks and a partial one
    chunk, tail = 100, 35  # the provisional block: 265 + 35 - 200 = 100 positions, a multiple of ROUND_POSITIONS
    with torch.inference_mode():
        cache = EncoderCache()
        encode_cached(encoder, cache, mel[:, :300], chunk, tail)  # an earlier update: one chunk done
        streamed = encode_cached(encoder, cache, mel, chunk, tail)[0]
        block = torch.arange(mel.shape[1] // 2 + tail) // chunk
        block[block >= 2] = 2  # the incomplete chunk and the tail form the last block
        reference = block_causal_reference(encoder, mel, tail, block)
    assert (streamed - reference).abs().max() < 1e-4
    assert cache.n_done == 200


def test_context_encoded_once_equals_two_block_reference(model_f32, lj):
    """The window strategy's cached context: earlier audio one block, encoded once; the segment and pad another."""
    from captioner.stream.features import log_mel_spectrogram

    encoder = model_f32.network.encoder
    mel = log_mel_spectrogram(lj)[:, :530]
    n_context, tail = 120, 55  # the segment block: 265 + 55 - 120 = 200 positions, a multiple of ROUND_POSITIONS
    with torch.inference_mode():
        cache = EncoderCache()
        encode_after_context(encoder, cache, mel[:, :300], n_context, tail)  # the segment's first update
        encoded = cache.n_encoded
        streamed = encode_after_context(encoder, cache, mel, n_context, tail)[0]
        block = (torch.arange(mel.shape[1] // 2 + tail) >= n_context).long()
        reference = block_causal_reference(encoder, mel, tail, block)
    assert (streamed - reference).abs().max() < 1e-4
    assert cache.n_encoded - encoded == mel.shape[1] // 2 + tail - n_context  # the context was not encoded again


def test_context_cross_attention_projected_once(engine, lj):
    """The context block's cross-attention keys/values are kept with the segment: a later update reuses them
    and decodes exactly as one that projects everything afresh."""
    from captioner.stream.features import log_mel_spectrogram

    mel = log_mel_spectrogram(lj)[:, :600]
    n_context = 120

    def update(frames: int, cache: SegmentCache):
        return UpdateJob(mel[:, :frames], [], [], [], 40, cache=cache, context_positions=n_context)

    kept = SegmentCache()
    engine.run([update(400, kept)])
    assert kept.cross[0][0].shape[-1] == kept.encoder.n_done == n_context
    projected = kept.cross[0][0]
    reused = engine.run([update(600, kept)])[0]
    assert kept.cross[0][0] is projected
    fresh = engine.run([update(600, SegmentCache())])[0]
    assert reused.tokens == fresh.tokens and reused.tokens
    assert [w.start for w in reused.words] == [w.start for w in fresh.words]


@pytest.mark.slow
def test_buffers_stay_bounded_on_a_long_stream(model, samples):
    """A stream many segments long: the session's buffers stay bounded by the segment and context limits
    (short limits, so that 25 s of speech is long; bench/buffers.py runs the same check on the longform recordings)."""
    config = StreamConfig(max_segment_s=3.0, context_s=1.5, update_context_s=1.5, prompt_tokens=16)
    engine = Engine(model, config)
    audio = torch.cat([load_audio(samples[name]["path"]) for name in ["LJ001-0001", "1688-142285-0000"]])
    session = Session.for_engine(engine)
    limit = (config.max_segment_s + config.context_s + 2) * 100
    n_finals = 0
    for start in range(0, len(audio), 16000):
        n_finals += sum(isinstance(e, Final) for e in session.feed(audio[start : start + 16000]))
        assert_bounded(session, config, limit)
    assert n_finals >= 5  # many segments came and went


def assert_bounded(session: Session, config: StreamConfig, limit: float) -> None:
    """The session holds no more audio, text or triggers than its limits allow."""
    buffer, planner = session._buffer, session._planner
    assert buffer.frames.shape[1] <= limit
    assert buffer.frame_max.shape[0] <= limit + 3000
    assert len(planner.prompt) <= config.prompt_tokens
    assert len(planner.said) <= 200  # the context's words
    assert len(session._clock.triggers) <= 40


@pytest.mark.slow  # it loads the model or starts servers itself
def test_cli_transcribe_stream_jsonl(samples, capsys):
    """`captioner transcribe FILE --stream --format jsonl`: every event as a protocol-shaped line with its clock time."""
    import json

    from captioner.tools.cli import main

    assert main(["transcribe", str(samples["LJ001-0001"]["path"]), "--stream", "--format", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["type"] for e in events} == {"partial", "final"}
    assert all({"segment", "text", "start", "end", "t"} <= set(e) for e in events)
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    finals = " ".join(e["text"] for e in events if e["type"] == "final")
    assert word_errors(samples["LJ001-0001"]["text"], finals).wer < 0.15


def test_a_server_behind_real_time_skips_partials_that_a_final_makes_obsolete(engine, samples):
    """skip_stale: after a backlog of audio that ends in silence, the next job is the segment's final, not
    the partial updates that were due before it (without skip_stale they come first)."""
    from captioner.stream.jobs import FinalJob, UpdateJob

    audio = torch.cat([load_audio(samples["LJ001-0001"]["path"])[: 16000 * 3], torch.zeros(16000)])
    patient, behind = Session.for_engine(engine), Session.for_engine(engine)
    for session in (patient, behind):
        session.push(audio)
        session.push_flush()
    assert isinstance(patient.next_job(), UpdateJob)
    job = behind.next_job(skip_stale=True)
    assert isinstance(job, FinalJob)
    (final,) = [e for e in behind.complete(engine.run([job])[0]) if isinstance(e, Final)]
    assert final.text.lower().startswith("printing in the only sense")


def test_an_update_taken_but_not_run_gives_way_to_the_final(engine, samples):
    """A worker took a stream's partial update and ran other streams' work first; the segment's end arrived
    meanwhile: with skip_stale the stream's next job is its final, not the update that it makes obsolete."""
    from captioner.stream.jobs import FinalJob

    speech = load_audio(samples["LJ001-0001"]["path"])[: 16000 * 3]
    session = Session.for_engine(engine)
    session.push(speech)
    assert isinstance(session.next_job(skip_stale=True), UpdateJob)
    session.push(torch.zeros(16000))
    session.push_flush()
    assert isinstance(session.next_job(), UpdateJob)  # without skip_stale: the same job until it is run
    job = session.next_job(skip_stale=True)
    assert isinstance(job, FinalJob)
    (final,) = [e for e in session.complete(engine.run([job])[0]) if isinstance(e, Final)]
    assert final.text.lower().startswith("printing in the only sense")


def test_a_server_behind_real_time_can_shed_partial_updates(engine, samples):
    """min_update_gap_s: ticks closer than that to the last update are passed over; the final is the same."""
    from captioner.stream.jobs import UpdateJob

    audio = torch.cat([load_audio(samples["LJ001-0001"]["path"])[: 16000 * 4], torch.zeros(16000)])

    def updates(gap: float) -> tuple[list[float], str]:
        session, times, finals = Session.for_engine(engine), [], []
        session.push(audio)
        session.push_flush()
        while (job := session.next_job(min_update_gap_s=gap)) is not None:
            if isinstance(job, UpdateJob):
                times.append(session.pending_time)
            finals += [e.text for e in session.complete(engine.run([job])[0]) if isinstance(e, Final)]
        return times, " ".join(finals)

    every, _ = updates(0.0)
    shed, final = updates(1.0)
    assert len(shed) < len(every) and all(b - a >= 1.0 for a, b in zip(shed, shed[1:]))
    assert word_errors("Printing, in the only sense with which we are at present concerned,", final).wer == 0


def test_a_stream_without_partials_runs_the_model_once_per_segment(engine, samples):
    """Speech(partials=False): no partial event and no update job; the finals still say the whole reading
    (44 s, so segments are also cut at the maximum length)."""
    from captioner.stream.jobs import FinalJob, Speech

    session = Session.for_engine(engine, speech=Speech("en", partials=False))
    session.push(load_audio(samples["two_cities"]["path"]))
    session.push_end()
    jobs, events = [], []
    while (job := session.next_job()) is not None:
        jobs.append(job)
        events += session.complete(engine.run([job])[0])
    assert jobs and all(isinstance(job, FinalJob) for job in jobs)
    assert events and all(isinstance(e, Final) for e in events)
    check_invariants(events)
    assert word_errors(samples["two_cities"]["text"], finals_text(events)).wer < 0.12
