"""Streaming accuracy, latency, stability and cost on real speech, per encoder strategy.

    python bench/stream.py [--model tiny.en|base|PATH] [--manifest ../shared/eval/manifest.jsonl] [--limit N]
                           [--strategies window cached] [--sessions 1 8] [--no-offline]
                           [--threads 1] [--device cpu|cuda] [--floor running|clip]

Each clip is streamed in 100 ms chunks on a simulated real-time clock that charges the measured
compute time (tools/simulate.py); with --sessions 8, eight clips stream at once and their model
work is batched, as the server's scheduler does. Reports, per strategy and session count:
final-caption WER (and our own offline greedy / beam-5 WER on the same clips, same run), partial
and final lag (emit time minus the audio time of the segment's end), the longest gap between
updates of an open segment, time to first partial after speech onset, the share of final words
already stable before the final and the delay from a word's end to its first stable appearance,
stable words contradicted by the final, encoder positions computed per audio position, CPU
seconds per audio second, reference words lost at the ends of clips, finals that end in two or
more zero-length words, and what the coverage checks of finals did (continuation passes kept, words
they added, words removed because no audio backs them, unbacked words kept because they were
stable). Each clip is decoded and scored in its manifest's language. --floor clip floors the log-mel
frames as Whisper does offline, at each stream's whole-audio maximum given to its session in advance,
instead of the running maximum a live stream has. Writes bench/results/stream.json and prints
Markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import harness
import torch

from captioner.stream.config import StreamConfig, parse_overrides
from captioner.stream.engine import Engine
from captioner.stream.events import Final, Partial
from captioner.stream.features import clip_maximum
from captioner.stream.jobs import AUTO, Speech
from captioner.tools.evaluate import WordErrors, lost_at_end, percentile, word_errors
from captioner.tools.simulate import Timed, simulate
from captioner.tools.transcribe import TranscribeOptions, transcribe

KEYS = ["wer", "final_lag_p50", "final_lag_p95", "partial_lag_p95", "update_gap_max", "first_partial_p95",
        "stable_share", "stable_delay_median", "contradicted_stable_words", "encoder_positions_per_audio_position",
        "cpu_s_per_audio_s", "lost_at_end", "zero_length_tails", "continuations", "words_added", "words_removed",
        "unbacked_kept"]  # the columns of the table printed


def analyse(stream: Timed) -> dict:
    """Latency and stability figures of one stream's timed events."""
    finals = {e.segment: (t, e) for t, e in stream.events if isinstance(e, Final)}
    partials: dict[int, list[tuple[float, Partial]]] = {}
    for t, e in stream.events:
        if isinstance(e, Partial):
            partials.setdefault(e.segment, []).append((t, e))
    out = {"final_lag": [], "partial_lag": [], "first_partial": [], "gaps": [], "words": 0, "stable_words": 0,
           "contradicted": 0, "stable_delay": []}
    heard = 0.0  # audio that earlier segments' captions had covered
    for segment, (t_final, final) in sorted(finals.items()):
        out["final_lag"].append(t_final - final.end)
        timeline = partials.get(segment, [])
        out["partial_lag"] += [t - p.end for t, p in timeline]
        onset = final.words[0].start if final.words else final.start
        first = timeline[0][0] if timeline else t_final
        if onset >= heard:  # new speech, not words carried on from a segment cut at its maximum length
            out["first_partial"].append(first - onset)
        heard = max([heard, final.end] + [p.end for _, p in timeline])
        times = [t for t, _ in timeline] + [t_final]
        out["gaps"] += [b - a for a, b in zip(times, times[1:])]
        final_words = final.text.split()
        out["words"] += len(final_words)
        if timeline:
            stable_words = timeline[-1][1].stable.split()
            out["stable_words"] += len(stable_words)
        for t, p in timeline:  # stable text must be a prefix of the final's text
            if not final.text.startswith(p.stable):
                stable = p.stable.split()
                bad = sum(a != b for a, b in zip(stable, final_words)) + max(0, len(stable) - len(final_words))
                out["contradicted"] = max(out["contradicted"], bad)
        for i, word in enumerate(final.words[: len(final_words)]):
            first_stable = next((t for t, p in timeline if len(p.stable.split()) > i), None)
            if first_stable is not None:
                out["stable_delay"].append(first_stable - word.end)
    return out


def streams_of(clips: list, audios: dict, sessions: int) -> list[tuple[str, torch.Tensor, str, str]]:
    """(name, audio, reference, language) per stream: one clip each for a single session; for several,
    the clips dealt round-robin to `sessions` continuous streams, joined with 1 s of silence, so that
    every stream is busy for the whole run as live callers are (language "auto" where they differ)."""
    if sessions == 1:
        return [(c.id, audios[c.id], c.text, c.language) for c in clips]
    gap = torch.zeros(16000)
    out = []
    for k in range(min(sessions, len(clips))):
        mine = clips[k::sessions]
        audio = torch.cat([piece for c in mine for piece in (audios[c.id], gap)])
        languages = {c.language for c in mine}
        language = languages.pop() if len(languages) == 1 else AUTO
        out.append((f"stream-{k}", audio, " ".join(c.text for c in mine), language))
    return out


def run_streaming(engine: Engine, clips: list, audios: dict, sessions: int, floor: str = "running") -> dict:
    """floor: the live log-mel floor ("running"), or Whisper's offline one ("clip": each stream's whole audio's
    maximum, given to its session in advance)."""
    streams = streams_of(clips, audios, sessions)
    results = {}
    cpu_start = time.process_time()
    compute = 0.0
    for start in range(0, len(streams), sessions):
        group = streams[start : start + sessions]
        maxima = [clip_maximum(audio, engine.n_mels) for _, audio, _, _ in group] if floor == "clip" else None
        timed, charged = simulate(engine, [audio for _, audio, _, _ in group],
                                  speeches=[Speech(language) for *_, language in group], floor_maxima=maxima)
        compute += charged
        for (name, *_), stream in zip(group, timed):
            results[name] = stream
    cpu = time.process_time() - cpu_start
    audio_s = sum(s.audio_s for s in results.values())
    total = WordErrors(0, 0)
    merged: dict[str, list] = {}
    analyses: dict[str, dict] = {}
    texts = {}
    lost = zero_tails = 0
    for name, _, reference, language in streams:
        stream = results[name]
        finals = sorted((e for _, e in stream.events if isinstance(e, Final)), key=lambda e: e.segment)
        texts[name] = " ".join(f.text for f in finals)
        total += word_errors(reference, texts[name], language)  # mixed ("auto"): Whisper's basic normaliser
        lost += lost_at_end(reference, texts[name])
        zero_tails += sum(len(f.words) >= 2 and all(w.end <= w.start for w in f.words[-2:]) for f in finals)
        analyses[name] = analyse(stream)
        for key, value in analyses[name].items():
            merged.setdefault(key, []).append(value)
    flat = {k: [x for v in vals for x in (v if isinstance(v, list) else [v])] for k, vals in merged.items()}
    positions = sum(s.encoder_positions for s in results.values())
    coverage = [c for s in results.values() for c in s.coverage]
    return {
        "wer": total.wer,
        "final_lag_p50": percentile(flat["final_lag"], 50), "final_lag_p95": percentile(flat["final_lag"], 95),
        "final_lag_max": max(flat["final_lag"]),
        "partial_lag_p50": percentile(flat["partial_lag"], 50), "partial_lag_p95": percentile(flat["partial_lag"], 95),
        "partial_lag_max": max(flat["partial_lag"]),
        "update_gap_p95": percentile(flat["gaps"], 95), "update_gap_max": max(flat["gaps"]),
        "first_partial_p50": percentile(flat["first_partial"], 50),
        "first_partial_p95": percentile(flat["first_partial"], 95),
        "stable_share": sum(flat["stable_words"]) / max(1, sum(flat["words"])),
        "stable_delay_median": statistics.median(flat["stable_delay"]) if flat["stable_delay"] else float("nan"),
        "contradicted_stable_words": max(flat["contradicted"]),
        "encoder_positions_per_audio_position": positions / (audio_s * 50),
        "cpu_s_per_audio_s": cpu / audio_s, "wall_compute_s_per_audio_s": compute / audio_s,
        "lost_at_end": lost, "zero_length_tails": zero_tails,
        "continuations": sum(c.continuations for c in coverage), "words_added": sum(c.words_added for c in coverage),
        "words_removed": sum(c.words_removed for c in coverage),
        "unbacked_kept": sum(c.unbacked_kept for c in coverage),
        "audio_s": audio_s, "texts": texts,
        "first_partial_latest": sorted(((round(x, 3), name) for name, figures in analyses.items()
                                        for x in figures["first_partial"]), reverse=True)[:20],
    }


def run_offline(model, clips: list, audios: dict, beam: int) -> tuple[float, dict[str, str]]:
    total, texts = WordErrors(0, 0), {}
    for clip in clips:
        options = TranscribeOptions(beam_size=beam, language=clip.language)
        texts[clip.id] = transcribe(model, audios[clip.id], options).text
        total += word_errors(clip.text, texts[clip.id], clip.language)
    return total.wer, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_model_arguments(parser)
    parser.add_argument("--manifest", type=Path, default=harness.default_manifest())
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--kinds", nargs="+", default=None, help="clip kinds (short, long, hard; default: all)")
    parser.add_argument("--strategies", nargs="+", default=["window", "cached"])
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--no-offline", action="store_true", help="skip the offline baselines")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="StreamConfig overrides")
    parser.add_argument("--floor", choices=["running", "clip"], default="running",
                        help="log-mel floor: the session's running rule, or Whisper's offline one (each stream's "
                             "whole audio's maximum, known in advance)")
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "stream.json")
    args = parser.parse_args()
    clips = harness.read_clips(args.manifest, args.limit, args.kinds)
    audios = harness.read_audio(clips)
    model = harness.load_args(args)
    overrides = parse_overrides(args.set)
    report = {"meta": harness.metadata(model=model.name, device=str(model.device), threads=args.threads,
                                       clips=len(clips), audio_s=sum(len(a) for a in audios.values()) / 16000,
                                       overrides=overrides, floor=args.floor), "runs": {}}
    if not args.no_offline:
        (greedy, _), (beam5, texts) = run_offline(model, clips, audios, 1), run_offline(model, clips, audios, 5)
        report["offline"] = {"greedy_wer": greedy, "beam5_wer": beam5, "beam5_texts": texts}
        print(f"offline: greedy {100 * greedy:.2f}%  beam-5 {100 * beam5:.2f}%", flush=True)
    for strategy in args.strategies:
        config = dataclasses.replace(StreamConfig(strategy=strategy), **overrides)
        engine = Engine(model, config)
        simulate(engine, [audios[clips[0].id][:32000]])  # warm up
        for sessions in args.sessions:
            result = run_streaming(engine, clips, audios, sessions, args.floor)
            report["runs"][f"{strategy}-x{sessions}"] = result
            print(f"{strategy} x{sessions}: " + ", ".join(
                f"{k}={v:.3f}" for k, v in result.items() if isinstance(v, float)), flush=True)
    harness.write_json(args.out, report)
    print("\n" + harness.table(["run", *KEYS], (
        [name, *(f"{r[k]:.3f}" if isinstance(r[k], float) else r[k] for k in KEYS)]
        for name, r in report["runs"].items())))


if __name__ == "__main__":
    main()
