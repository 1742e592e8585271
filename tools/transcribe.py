"""Offline transcription of a whole recording, window by window, as openai-whisper and faster-whisper do it.

Each 30 s window is decoded with timestamp tokens, conditioned on the previous windows' text;
a decode that looks like a repetition loop (compression ratio) or is unsure (mean log-probability)
is retried at rising temperatures. The next window starts where the last complete segment ended.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from captioner.decoder.decoding import DecodingOptions, DecodingResult, DecodingRow
from captioner.decoder.timing import WordTiming, merge_punctuations
from captioner.decoder.vocabulary import Vocabulary
from captioner.model.errors import ModelError
from captioner.model.whisper import Model
from captioner.stream.audio import SAMPLE_RATE
from captioner.stream.config import StreamConfig
from captioner.stream.embeddings import speaker_embedder
from captioner.stream.events import Final, Word
from captioner.stream.features import FRAMES_PER_SECOND, PAD_VALUE, log_mel_spectrogram
from captioner.stream.speakers import SpeakerLabels

__all__ = ["TranscribeOptions", "Segment", "Transcript", "transcribe", "label_speakers", "encode_window"]

INPUT_STRIDE = 2  # mel frames per encoder position


@dataclass(frozen=True)
class TranscribeOptions:
    beam_size: int = 5  # 1 decodes greedily
    best_of: int = 5  # samples per window at temperatures above 0
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # fallback ladder
    compression_ratio_threshold: float | None = 2.4  # above: retry hotter (repetition loop)
    log_prob_threshold: float | None = -1.0  # mean token log-probability below: retry hotter
    no_speech_threshold: float | None = 0.6  # skip a window this likely silent (unless log-prob is high)
    condition_on_previous_text: bool = True  # prompt each window with the text so far
    prompt_reset_on_temperature: float = 0.5  # stop conditioning after a decode this hot
    without_timestamps: bool = False  # True: one segment per window
    word_timestamps: bool = False
    encoder_padding: float | None = None  # seconds of 0.0 frames after the audio; None: the full 30 s window
    seed: int = 0  # for sampling at temperatures above 0
    language: str | None = None  # spoken language; None: the model's default; "auto": detected on the first window
    task: str = "transcribe"  # or "translate": English text of speech in another language
    keywords: tuple[str, ...] = ()  # words and phrases the speech is likely to contain, favoured in decoding
    keyword_bonus: float = 3.0  # as StreamConfig's
    keyword_start_bonus: float = 1.0


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None  # with speaker labels: that of most of its words (each word has its own)


@dataclass(frozen=True)
class Transcript:
    segments: list[Segment]
    duration: float  # seconds of audio
    language: str = "en"  # what the text was decoded as (the speech's language; English text when translating)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()


def transcribe(model: Model, audio: torch.Tensor, options: TranscribeOptions = TranscribeOptions()) -> Transcript:
    """Transcribe 16 kHz mono audio."""
    mel = log_mel_spectrogram(audio, model.n_mels)
    n_content = mel.shape[1]
    window_frames = model.max_frames
    generator = torch.Generator(model.device).manual_seed(options.seed)
    language = options.language or model.tokenizer.language
    if language == "auto":
        memory, _ = encode_window(model, mel[:, :window_frames], options.encoder_padding)
        language = next(iter(model.detect_language(memory)[0]))
    try:
        sot = model.tokenizer.sot_sequence_for(language, options.task)
    except ValueError as e:
        raise ModelError(f"{model.name}: {e}") from e
    vocabulary = Vocabulary(model.tokenizer, options.keywords, options.keyword_bonus, options.keyword_start_bonus) \
        if options.keywords else None
    seek = 0
    all_tokens: list[int] = []
    prompt_reset_since = 0
    segments: list[Segment] = []
    while seek < n_content:
        size = min(window_frames, n_content - seek)
        memory, n_frames = encode_window(model, mel[:, seek : seek + size], options.encoder_padding)
        prompt = all_tokens[prompt_reset_since:] if options.condition_on_previous_text else []
        result = _decode_with_fallback(model, memory, prompt, options, generator, sot, vocabulary)
        if _is_silence(result, options):
            seek += size
            continue
        offset = seek / FRAMES_PER_SECOND
        window_segments, advance = _split_by_timestamps(model, result, offset, size)
        if options.word_timestamps:
            window_segments = _add_words(model, memory, n_frames, window_segments, offset, sot)
        for segment in window_segments:
            if segment.start == segment.end or not segment.text.strip():
                continue
            segments.append(segment)
            all_tokens.extend(segment.tokens)
        if not options.condition_on_previous_text or result.temperature > options.prompt_reset_on_temperature:
            prompt_reset_since = len(all_tokens)
        seek += advance
    return Transcript(segments, len(audio) / SAMPLE_RATE, language)


def label_speakers(transcript: Transcript, audio: torch.Tensor, config: StreamConfig = StreamConfig()) -> Transcript:
    """The transcript with speaker labels, given in segment order as a diarize=true stream gives them to finals
    (its segments need word times)."""
    labels = SpeakerLabels(config, speaker_embedder(config.speaker_window_s, config.speaker_hop_s,
                                                    config.max_speaker_wait_s))
    segments, sent = [], 0
    for i, segment in enumerate(transcript.segments):
        until = max(sent, round(segment.end * SAMPLE_RATE))  # the audio up to the segment, as a stream has it
        labels.push(audio[sent:until])
        sent = until
        final = labels.label(Final(i, segment.text, segment.start, segment.end, segment.words))
        segments.append(replace(segment, words=final.words, speaker=final.speaker))
    return replace(transcript, segments=segments)


def encode_window(model: Model, mel: torch.Tensor, padding: float | None) -> tuple[torch.Tensor, int]:
    """Encoder output of up to 30 s of mel frames padded with `padding` s of silence frames (None: to 30 s),
    and how many frames were audio."""
    n_frames = mel.shape[1]
    if padding is None:
        total = model.max_frames
    else:
        total = min(model.max_frames, n_frames + round(padding * FRAMES_PER_SECOND))
        total += total % 2
    mel = F.pad(mel, (0, total - n_frames), value=PAD_VALUE)
    return model.encode(mel[None]), n_frames


def _decode_with_fallback(
    model: Model, memory: torch.Tensor, prompt: list[int], options: TranscribeOptions, generator: torch.Generator,
    sot: tuple[int, ...], vocabulary: Vocabulary | None = None,
) -> DecodingResult:
    """Decode at rising temperatures until the result is neither repetitive nor unsure."""
    results: list[DecodingResult] = []
    for temperature in options.temperatures:
        decoding = DecodingOptions(
            temperature=temperature,
            beam_size=options.beam_size,
            best_of=options.best_of,
            without_timestamps=options.without_timestamps,
        )
        row = DecodingRow(prompt, sot_sequence=sot, vocabulary=vocabulary)
        result = model.decode(memory, [row], decoding, generator=generator)[0]
        results.append(result)
        repetitive = (
            options.compression_ratio_threshold is not None
            and result.compression_ratio > options.compression_ratio_threshold
        )
        unsure = options.log_prob_threshold is not None and result.avg_logprob < options.log_prob_threshold
        silent = (
            options.no_speech_threshold is not None
            and result.no_speech_prob > options.no_speech_threshold
            and unsure
        )
        if silent or not (repetitive or unsure):
            return result
    acceptable = [
        r for r in results
        if options.compression_ratio_threshold is None or r.compression_ratio <= options.compression_ratio_threshold
    ]
    best = max(acceptable or results, key=lambda r: r.avg_logprob)
    return replace(best, temperature=results[-1].temperature)


def _is_silence(result: DecodingResult, options: TranscribeOptions) -> bool:
    if options.no_speech_threshold is None or result.no_speech_prob <= options.no_speech_threshold:
        return False
    return options.log_prob_threshold is None or result.avg_logprob <= options.log_prob_threshold


def _split_by_timestamps(model: Model, result: DecodingResult, offset: float, size: int) -> tuple[list[Segment], int]:
    """Cut a window's tokens into segments at timestamp pairs; return them and how far to seek."""
    tokenizer = model.tokenizer
    begin = tokenizer.timestamp_begin
    tokens = result.tokens

    def segment(piece: list[int], start: float, end: float) -> Segment:
        return Segment(
            start=start,
            end=end,
            text=tokenizer.decode(piece),
            tokens=piece,
            avg_logprob=result.avg_logprob,
            no_speech_prob=result.no_speech_prob,
            compression_ratio=result.compression_ratio,
            temperature=result.temperature,
        )

    single_timestamp_ending = len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1]
    cuts = [i for i in range(1, len(tokens)) if tokens[i] >= begin and tokens[i - 1] >= begin]
    if not cuts:
        timestamps = [t for t in tokens if t >= begin]
        duration = size / FRAMES_PER_SECOND
        if timestamps and timestamps[-1] != begin:
            duration = tokenizer.timestamp(timestamps[-1])
        return [segment(tokens, offset, offset + duration)], size
    if single_timestamp_ending:
        cuts.append(len(tokens))
    segments = []
    last = 0
    for cut in cuts:
        piece = tokens[last:cut]
        segments.append(segment(piece, offset + tokenizer.timestamp(piece[0]), offset + tokenizer.timestamp(piece[-1])))
        last = cut
    if single_timestamp_ending:
        return segments, size
    # the last segment is unfinished: the next window starts at its opening timestamp
    return segments, (tokens[last - 1] - begin) * INPUT_STRIDE


def _add_words(
    model: Model, memory: torch.Tensor, n_frames: int, segments: list[Segment], offset: float, sot: tuple[int, ...],
) -> list[Segment]:
    eot = model.tokenizer.eot
    text_tokens = [[t for t in s.tokens if t < eot] for s in segments]
    flat = [t for tokens in text_tokens for t in tokens]
    if not flat:
        return segments
    timings = merge_punctuations(model.align(memory, [n_frames], [flat], sot_sequences=[sot])[0].words)
    timings = _clip_long_words(timings)
    out = []
    index = 0
    for segment, tokens in zip(segments, text_tokens):
        words: list[WordTiming] = []
        consumed = 0
        while index < len(timings) and consumed < len(tokens):
            words.append(timings[index])
            consumed += len(timings[index].tokens)
            index += 1
        shifted = [Word(w.word.strip(), round(offset + w.start, 2), round(offset + w.end, 2), w.probability)
                   for w in words]
        if shifted:
            segment = replace(segment, start=shifted[0].start, end=shifted[-1].end, words=shifted)
        out.append(segment)
    return out


def _clip_long_words(words: list[WordTiming]) -> list[WordTiming]:
    """Hack from openai-whisper: a word at a sentence boundary is at most twice the median word long.

    DTW stretches the word before or after a pause over the pause; VAD-based segmentation
    (as in the streaming session) is the better fix.
    """
    durations = [w.end - w.start for w in words if w.end > w.start]
    if not durations:
        return words
    median = min(0.7, statistics.median(durations))
    longest = 2 * median
    out = list(words)
    for i in range(1, len(out)):
        if out[i].end - out[i].start > longest:
            if out[i].word.strip() in ".。!！?？":
                out[i] = replace(out[i], end=out[i].start + longest)
            elif out[i - 1].word.strip() in ".。!！?？":
                out[i] = replace(out[i], start=out[i].end - longest)
    return out


