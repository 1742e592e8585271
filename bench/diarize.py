"""Speaker labels on simulated conversations: word speaker error, DER, cpWER, speaker count, lag and cost.

    python bench/diarize.py [--per-count 8] [--seed 0] [--minutes 2] [--mode labels|server] [--concurrent 6]
                            [--set new_speaker_similarity=0.7 ...]

Conversations are built from ../shared/eval clips of seven speakers (LibriSpeech test-other readers
1688, 1998, 2033, 2414 and 2609, the LJ Speech speaker, and the FLEURS speaker of en_us test clips
002-004): for each of 2, 3 and 4 speakers, --per-count conversations of about --minutes minutes,
whose first turns give every speaker the floor once, then a random speaker other than the last;
each turn one to three of that speaker's utterances; 0.2-1.0 s of silence between utterances. Each
speaker talks at a level of their own, drawn from -28 to -20 dBFS (as a meeting's microphones differ;
the clips themselves range from -67 dBFS, FLEURS, to -19 dBFS, LJ Speech).
`conversations()` rebuilds them exactly from the seed.

--mode labels takes each conversation's finals from the latest --mode server run (or, failing
that, streams it through a Session, tiny.en, as fast as it computes: slow), then labels them in
order as a diarize=true session does (the same SpeakerLabels, fed the same audio); the finals are
cached in bench/results/diarize/, so that settings of the labels can be compared quickly (--set).
It reports the CPU seconds per audio second that labelling costs (one thread). --mode server streams the conversations through a real server at real-time pace,
--concurrent at a time, with diarize=false and then diarize=true, and adds the final lag of each.

Scores, per speaker count: word speaker error (reference words, paired with a hypothesis word by the
WER alignment, whose word got the wrong speaker under the best one-to-one mapping of labels), DER
from word times (each hypothesis word's label held until the next word within 0.5 s, 10 ms frames,
no collar), cpWER (per-speaker texts concatenated, the best permutation), and the share of
conversations whose number of speakers came out right; beside them the word speaker error of
captions without labels (every word one speaker's), the floor that labels must beat. Server
mode also reports the server process's CPU seconds per audio second with and without labels.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import itertools
import json
import random
import re
import string
import sys
import time
from pathlib import Path

import harness
import jiwer
import numpy as np
import torch

from captioner.stream.audio import SAMPLE_RATE, load_audio
from captioner.stream.config import StreamConfig, parse_overrides
from captioner.stream.events import Final, Word, event_to_dict
from captioner.stream.speakers import SpeakerLabels
from captioner.tools.evaluate import percentile, word_errors

RESULTS = harness.RESULTS / "diarize"
FLEURS_SPEAKER = ("fleurs-en_us-test-002", "fleurs-en_us-test-003", "fleurs-en_us-test-004")
LEVELS_DBFS = (-28.0, -20.0)  # each speaker's loudness: the clips' own levels span -67 (FLEURS) to -19 dBFS
HOLD_S = 0.5  # DER: a word's label holds until the next word when it starts within this long


@dataclasses.dataclass
class Turn:
    speaker: str
    start: float
    end: float
    text: str


@dataclasses.dataclass
class Conversation:
    id: str
    n_speakers: int
    audio: np.ndarray  # 16 kHz float32
    turns: list[Turn]  # one per utterance


def speaker_clips() -> dict[str, list]:
    """The eval clips of each of the seven speakers, in manifest order."""
    out: dict[str, list] = {}
    for clip in harness.read_clips(harness.EVAL / "manifest.jsonl"):
        if clip.id.startswith("ls-test-other-"):
            out.setdefault(clip.id.split("-")[3], []).append(clip)
        elif clip.id.startswith("ljspeech-"):
            out.setdefault("LJ", []).append(clip)
        elif clip.id in FLEURS_SPEAKER:
            out.setdefault("FLEURS", []).append(clip)
    return out


def _level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    return (audio * (10 ** (dbfs / 20) / max(rms, 1e-9))).clip(-1, 1).astype(np.float32)


def conversations(per_count: int, seed: int, minutes: float) -> list[Conversation]:
    pool = speaker_clips()
    cache: dict[str, np.ndarray] = {}
    out = []
    for n in (2, 3, 4):
        for k in range(per_count):
            rng = random.Random(f"{seed}-{n}-{k}")
            speakers = rng.sample(sorted(pool), n)
            queues = {s: rng.sample(pool[s], len(pool[s])) for s in speakers}
            levels = {s: rng.uniform(*LEVELS_DBFS) for s in speakers}
            order = list(speakers)
            pieces, turns, t = [], [], 0.0
            while t < minutes * 60 or order:
                speaker = order.pop(0) if order else rng.choice([s for s in speakers if s != turns[-1].speaker])
                for _ in range(rng.randint(1, 3)):
                    clip = queues[speaker].pop(0)
                    queues[speaker].append(clip)  # a speaker with few clips repeats them
                    if clip.id not in cache:
                        cache[clip.id] = load_audio(clip.audio).numpy()
                    clip_audio = _level(cache[clip.id], levels[speaker])
                    gap = np.zeros(int(rng.uniform(0.2, 1.0) * SAMPLE_RATE), np.float32)
                    pieces += [gap, clip_audio]
                    t += len(gap) / SAMPLE_RATE
                    turns.append(Turn(speaker, round(t, 3), round(t + len(clip_audio) / SAMPLE_RATE, 3), clip.text))
                    t = turns[-1].end
            pieces.append(np.zeros(SAMPLE_RATE, np.float32))
            out.append(Conversation(f"{n}spk-{k}", n, np.concatenate(pieces), turns))
    return out


# -- scoring ----------------------------------------------------------------------------------------


def _plain(word: str) -> str:
    return re.sub(f"[{re.escape(string.punctuation)}]", "", word.lower())


def _best_mapping(counts: dict[tuple[str, str], float], hyps: list[str], refs: list[str]) -> dict[str, str]:
    """The one-to-one map of hypothesis labels to reference speakers with the most agreement."""
    best, best_score = {}, -1.0
    padded = hyps + [None] * max(0, len(refs) - len(hyps))
    for chosen in itertools.permutations(padded, len(refs)):
        score = sum(counts.get((h, r), 0.0) for h, r in zip(chosen, refs) if h is not None)
        if score > best_score:
            best, best_score = {h: r for h, r in zip(chosen, refs) if h is not None}, score
    return best


def score(conversation: Conversation, finals: list[dict]) -> dict:
    words = [w for f in finals for w in f["words"] if _plain(w["word"])]
    hyps = sorted({w["speaker"] for w in words})
    refs = sorted({t.speaker for t in conversation.turns})
    ref_words = [(word, t.speaker) for t in conversation.turns for word in t.text.split() if _plain(word)]
    # word speaker error: pairs of the WER alignment
    out = jiwer.process_words(" ".join(_plain(w) for w, _ in ref_words), " ".join(_plain(w["word"]) for w in words))
    pairs = [(ref_words[chunk.ref_start_idx + i][1], words[chunk.hyp_start_idx + i]["speaker"])
             for chunk in out.alignments[0] if chunk.type in ("equal", "substitute")
             for i in range(chunk.ref_end_idx - chunk.ref_start_idx)]
    counts: dict[tuple[str, str], float] = {}
    for r, h in pairs:
        counts[(h, r)] = counts.get((h, r), 0) + 1
    mapping = _best_mapping(counts, hyps, refs)
    wrong = sum(mapping.get(h) != r for r, h in pairs)
    by_speaker = [sum(r == speaker for r, _ in pairs) for speaker in refs]
    wrong_one = len(pairs) - max(by_speaker, default=0)  # the baseline: no labels, everyone is one speaker
    # DER over 10 ms frames
    n = int(len(conversation.audio) / SAMPLE_RATE * 100) + 1
    ref_frames = np.full(n, -1)
    for t in conversation.turns:
        ref_frames[int(t.start * 100) : int(t.end * 100)] = refs.index(t.speaker)
    hyp_frames = np.full(n, -1)
    for i, w in enumerate(words):
        end = w["end"]
        if i + 1 < len(words) and words[i + 1]["start"] - w["end"] < HOLD_S:
            end = words[i + 1]["start"]
        hyp_frames[int(w["start"] * 100) : int(end * 100)] = hyps.index(w["speaker"])
    overlap: dict[tuple[str, str], float] = {}
    for h, r in zip(hyp_frames, ref_frames):
        if h >= 0 and r >= 0:
            overlap[(hyps[h], refs[r])] = overlap.get((hyps[h], refs[r]), 0) + 1
    frame_map = _best_mapping(overlap, hyps, refs)
    mapped = np.array([refs.index(frame_map[h]) if h in frame_map else -2 for h in hyps] + [-1])[hyp_frames]
    speech = ref_frames >= 0
    errors = np.sum(speech & (hyp_frames < 0)) + np.sum(~speech & (hyp_frames >= 0)) + \
        np.sum(speech & (hyp_frames >= 0) & (mapped != ref_frames))
    # cpWER: the best permutation of per-speaker texts
    ref_texts = {r: " ".join(t.text for t in conversation.turns if t.speaker == r) for r in refs}
    hyp_texts = {h: " ".join(w["word"] for w in words if w["speaker"] == h) for h in hyps}
    best_cp = None
    padded = hyps + [None] * max(0, len(refs) - len(hyps))
    for chosen in itertools.permutations(padded, len(refs)):
        total = sum(word_errors(ref_texts[r], hyp_texts.get(h, "") if h else "").errors for h, r in zip(chosen, refs))
        total += sum(len(hyp_texts[h].split()) for h in hyps if h not in chosen)
        best_cp = total if best_cp is None else min(best_cp, total)
    n_ref = sum(len(t.split()) for t in ref_texts.values())
    return {"id": conversation.id, "n_speakers": conversation.n_speakers, "found": len(hyps),
            "wse": wrong / max(1, len(pairs)), "paired": len(pairs), "wrong": int(wrong), "wrong_one": wrong_one,
            "der": float(errors / max(1, speech.sum())), "cpwer": (best_cp or 0) / max(1, n_ref), "ref_words": n_ref}


def summary(scores: list[dict]) -> dict:
    out = {}
    for n in sorted({s["n_speakers"] for s in scores}):
        mine = [s for s in scores if s["n_speakers"] == n]
        out[n] = {"conversations": len(mine),
                  "wse": sum(s["wrong"] for s in mine) / max(1, sum(s["paired"] for s in mine)),
                  "wse_one_speaker": sum(s["wrong_one"] for s in mine) / max(1, sum(s["paired"] for s in mine)),
                  "der": float(np.mean([s["der"] for s in mine])),
                  "cpwer": sum(s["cpwer"] * s["ref_words"] for s in mine) / max(1, sum(s["ref_words"] for s in mine)),
                  "count_right": sum(s["found"] == n for s in mine) / len(mine),
                  "found": [s["found"] for s in mine]}
    return out


# -- runs -------------------------------------------------------------------------------------------


def _asr_path(conversation: Conversation) -> Path:
    digest = hashlib.sha256(conversation.audio.tobytes()).hexdigest()[:12]
    return RESULTS / f"asr-{conversation.id}-{digest}.json"


def stream_finals(conversation: Conversation, engine) -> list[dict]:
    """The conversation's finals from a streaming session without labels (cached per conversation and model)."""
    from captioner.stream.session import Session

    path = _asr_path(conversation)
    if path.exists():
        return json.loads(path.read_text())
    session = Session.for_engine(engine)
    events = []
    for i in range(0, len(conversation.audio), SAMPLE_RATE // 10):
        events += session.feed(conversation.audio[i : i + SAMPLE_RATE // 10])
    events += session.end()
    finals = [event_to_dict(e) for e in events if isinstance(e, Final)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finals))
    return finals


def label(conversation: Conversation, finals: list[dict], config: StreamConfig, embedder) -> tuple[list[dict], float]:
    """The finals labelled in order as a diarize=true session labels them; and the thread CPU seconds it took."""
    labels = SpeakerLabels(config, embedder)
    audio = torch.from_numpy(conversation.audio)
    step, sent, out = SAMPLE_RATE // 10, 0, []
    cpu = 0.0
    for f in finals:
        final = Final(f["segment"], f["text"], f["start"], f["end"], [Word(**w) for w in f["words"]], f["language"])
        # audio reaches the session before its final: up to the end of the final's segment and a second more
        until = min(len(audio), int((f["end"] + 1.0) * SAMPLE_RATE))
        started = time.thread_time()
        while sent < until:
            labels.push(audio[sent : sent + step])
            sent += step
        out.append(event_to_dict(labels.label(final)))
        cpu += time.thread_time() - started
    return out, cpu


def run_labels(talks: list[Conversation], config: StreamConfig) -> dict:
    from captioner.model.speaker_encoder import load_speaker_encoder
    from captioner.stream.embeddings import SpeakerEmbedder
    from captioner.stream.engine import Engine

    engine = Engine(harness.load(None, "cpu", 2), config)
    embedder = SpeakerEmbedder(load_speaker_encoder(), config.speaker_window_s, config.speaker_hop_s,
                               config.max_speaker_wait_s)
    scores, cpu, audio_s = [], 0.0, 0.0
    for talk in talks:
        torch.set_num_threads(2)
        finals = stream_finals(talk, engine)
        torch.set_num_threads(1)
        labelled, spent = label(talk, finals, config, embedder)
        cpu += spent
        audio_s += len(talk.audio) / SAMPLE_RATE
        scores.append(score(talk, labelled))
        print(json.dumps(scores[-1]), file=sys.stderr, flush=True)
    return {"scores": scores, "summary": summary(scores), "label_cpu_s_per_audio_s": cpu / audio_s,
            "audio_s": audio_s}


async def _stream_all(url: str, talks: list[Conversation], concurrent: int, diarize: bool) -> list:
    from captioner.tools.replay import replay

    gate = asyncio.Semaphore(concurrent)

    async def one(talk: Conversation):
        async with gate:
            return await replay(url, talk.audio, query={"diarize": "true"} if diarize else None)

    return await asyncio.gather(*(one(t) for t in talks))


def run_server(talks: list[Conversation], concurrent: int, threads: int, plain: bool = True) -> dict:
    options = ["--threads", str(threads), "--device", "cpu", "--model", "tiny.en",
               "--max-sessions", str(max(8, concurrent)), "--log-format", "text"]
    out = {}
    audio_s = sum(len(t.audio) for t in talks) / SAMPLE_RATE
    RESULTS.mkdir(parents=True, exist_ok=True)
    with harness.serving(options) as url:
        for diarize in (False, True) if plain else (True,):
            started, cpu = time.monotonic(), harness.server_cpu_s(url)
            replays = asyncio.run(_stream_all(url, talks, concurrent, diarize))
            lags = [x for r in replays for x in r.lags("final")]
            out["diarize" if diarize else "plain"] = {
                "final_lag_p50": percentile(lags, 50), "final_lag_p95": percentile(lags, 95),
                "server_cpu_s_per_audio_s": (harness.server_cpu_s(url) - cpu) / audio_s,
                "wall_s": time.monotonic() - started,
                "errors": [r.close_code for r in replays if r.close_code != 1000]}
            if diarize:
                scores = [score(t, r.finals) for t, r in zip(talks, replays)]
                for t, r in zip(talks, replays):  # --mode labels relabels these finals
                    finals = [{**f, "words": [{**w, "speaker": None} for w in f["words"]]} for f in r.finals]
                    _asr_path(t).write_text(json.dumps(finals))
                out["scores"], out["summary"] = scores, summary(scores)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-count", type=int, default=8, help="conversations per speaker count (2, 3, 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--mode", choices=["labels", "server"], default="labels")
    parser.add_argument("--concurrent", type=int, default=6, help="--mode server: streams at once")
    parser.add_argument("--threads", type=int, default=2, help="--mode server: the server's inference threads")
    parser.add_argument("--no-plain", action="store_true", help="--mode server: skip the diarize=false pass")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="StreamConfig overrides")
    args = parser.parse_args()
    if not harness.EVAL.exists():
        raise SystemExit("bench/diarize.py needs ../shared/eval")
    talks = conversations(args.per_count, args.seed, args.minutes)
    config = StreamConfig(**parse_overrides(args.set))
    if args.mode == "labels":
        result = run_labels(talks, config)
    else:
        result = run_server(talks, args.concurrent, args.threads, not args.no_plain)
    result["meta"] = harness.metadata(conversations=len(talks), set=args.set)
    harness.write_json(RESULTS / f"{args.mode}-seed{args.seed}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "scores"}, indent=1))


if __name__ == "__main__":
    main()
