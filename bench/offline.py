"""Offline accuracy and speed: captioner's Whisper against faster-whisper on the same weights and clips.

    python bench/offline.py [--model tiny.en] [--manifest ../shared/eval/manifest.jsonl] [--limit N] [--configs ...]

Each configuration transcribes every clip (window by window, timestamps, temperature fallback,
conditioning on previous text: both libraries' defaults) in the manifest's `language` (English where
it has none) and reports WER after Whisper's normalisation (English, or basic), per corpus, and
the real-time factor (compute seconds / audio seconds). It also
counts the clips whose transcript is identical to faster-whisper's at the same precision and beam.
The real-length configurations encode only the audio there is (plus that many seconds of 0.0
log-mel frames) instead of a 30 s window: what the streaming core does. Results go to bench/results/offline.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import harness
import torch

from captioner.model.catalog import MODELS, locate
from captioner.tools.evaluate import WordErrors, word_errors
from captioner.tools.transcribe import TranscribeOptions, transcribe

# name: (engine, precision, beam, encoder padding in seconds: None for the 30 s window, else real length + pad,
# captioner's int8 layers: model/int8.py)
CONFIGS = {
    "fw-int8-greedy": ("faster-whisper", "int8", 1, None, "off"),
    "fw-int8-beam5": ("faster-whisper", "int8", 5, None, "off"),
    "fw-f32-greedy": ("faster-whisper", "float32", 1, None, "off"),
    "fw-f32-beam5": ("faster-whisper", "float32", 5, None, "off"),
    "ours-f32-greedy": ("captioner", "float32", 1, None, "off"),
    "ours-f32-beam5": ("captioner", "float32", 5, None, "off"),
    "ours-bf16-greedy": ("captioner", "bfloat16", 1, None, "off"),
    "ours-bf16-beam5": ("captioner", "bfloat16", 5, None, "off"),
    "ours-f32-int8-greedy": ("captioner", "float32", 1, None, "all"),  # --int8 all, encoder and decoder
    "ours-f32-int8-beam5": ("captioner", "float32", 5, None, "all"),
    "ours-bf16-int8-greedy": ("captioner", "bfloat16", 1, None, "decoder"),  # --int8 auto
    "ours-bf16-int8-beam5": ("captioner", "bfloat16", 5, None, "decoder"),
    "ours-bf16-greedy-real-length": ("captioner", "bfloat16", 1, 0.0, "off"),
    "ours-bf16-greedy-real-length+4s": ("captioner", "bfloat16", 1, 4.0, "off"),
}


def ct2_directory(model: str) -> Path:
    """A CTranslate2 directory of `model` (a name or a path) that faster-whisper can load: a named model kept
    in parts gets a joined copy in a temporary directory (captioner itself reads the parts in place)."""
    if model not in MODELS:
        return Path(model)
    found = locate(model)
    if len(found.parts) == 1:
        return found.directory
    joined = Path(tempfile.mkdtemp(prefix=f"captioner-{model}-"))
    with open(joined / "model.bin", "wb") as out:
        for part in found.parts:
            out.write(part.read_bytes())
    for name in ("config.json", "tokenizer.json", "vocabulary.json", "preprocessor_config.json"):
        if (found.directory / name).is_file():
            (joined / name).symlink_to(found.directory / name)
    return joined


def make_engine(model_name: str, engine: str, precision: str, beam: int, padding: float | None,  # noqa: ANN201
                int8: str, threads: int):
    if engine == "faster-whisper":
        from faster_whisper import WhisperModel

        fw = WhisperModel(str(ct2_directory(model_name)), device="cpu", compute_type=precision, cpu_threads=threads)

        def run(audio: torch.Tensor, language: str) -> str:
            segments, _ = fw.transcribe(audio.numpy(), beam_size=beam, language=language, vad_filter=False)
            return "".join(s.text for s in segments).strip()

        return run
    model = harness.load(model_name, "cpu", threads, getattr(torch, precision), int8)
    return lambda audio, language: transcribe(
        model, audio, TranscribeOptions(beam_size=beam, encoder_padding=padding, language=language)).text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny.en", help="a named model or a CTranslate2 directory")
    parser.add_argument("--manifest", type=Path, default=harness.default_manifest())
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "offline.json")
    args = parser.parse_args()
    clips = harness.read_clips(args.manifest, args.limit)
    audios = harness.read_audio(clips)
    results = {}
    for name in args.configs:
        run = make_engine(args.model, *CONFIGS[name], args.threads)
        run(audios[clips[0].id][:16000], clips[0].language)  # warm up
        texts, total, by_corpus, compute = {}, WordErrors(0, 0), {}, 0.0
        for clip in clips:
            started = time.perf_counter()
            texts[clip.id] = run(audios[clip.id], clip.language)
            compute += time.perf_counter() - started
            errors = word_errors(clip.text, texts[clip.id], clip.language)
            total += errors
            by_corpus[clip.corpus] = by_corpus.get(clip.corpus, WordErrors(0, 0)) + errors
        audio_s = sum(len(a) for a in audios.values()) / 16000
        results[name] = {"wer": total.wer, "rtf": compute / audio_s, "texts": texts,
                         "corpora": {c: e.wer for c, e in by_corpus.items()}}
        print(f"{name}: WER {100 * total.wer:.2f}%  RTF {compute / audio_s:.3f}", flush=True)
    short = [c.id for c in clips if c.kind == "short"]
    for name in results:
        engine, precision, beam, padding, int8 = CONFIGS[name]
        twin = f"fw-{'f32' if precision == 'float32' else 'int8'}-{'greedy' if beam == 1 else 'beam5'}"
        if engine == "captioner" and precision == "float32" and padding is None and int8 == "off" and twin in results:
            same = sum(results[name]["texts"][i] == results[twin]["texts"][i] for i in short)
            results[name]["identical_to_fw_short"] = f"{same}/{len(short)}"
    meta = harness.metadata(model=args.model, manifest=str(args.manifest), threads=args.threads, clips=len(clips))
    harness.write_json(args.out, {"meta": meta, "results": results})
    corpora = sorted({c.corpus for c in clips})
    header = ["config", "WER", *corpora, "RTF", "identical to faster-whisper (short clips)"]
    print("\n" + harness.table(header, (
        [name, f"{100 * r['wer']:.2f} %", *(f"{100 * r['corpora'].get(c, 0):.1f} %" for c in corpora),
         f"{r['rtf']:.3f}", r.get("identical_to_fw_short", "")] for name, r in results.items())))


if __name__ == "__main__":
    main()
