"""The compatible APIs against the native endpoint, on one real server: words, lag, and what files cost live streams.

    python bench/apis.py [--limit N] [--kinds short long hard] [--load-s 60] [--skip-streams] [--skip-load]
        [--url ws://...]

1. Streams. Each API in turn, and each clip of ../shared/eval (samples/ when absent) through two
   clients at once, at real-time pace in 100 ms frames: the native protocol (/v1/stream) and the API's
   (two streams on the server's two inference workers: nothing waits for another stream, so the two
   differ only by their protocol). The APIs: OpenAI Realtime transcription
   (/v1/realtime?intent=transcription, base64 pcm16 at 24 kHz as OpenAI's clients send it, server VAD;
   and again at 16 kHz, the rate of the clips, so that the model hears the very audio the native stream
   carries) and AssemblyAI v3 (/v3/ws, format_turns=true). The clients are written here from the public
   specifications, not with the SDKs (the tests use those). Finals: native finals; OpenAI's `completed`
   transcripts; AssemblyAI's formatted end-of-turn transcripts. WER against the references, after
   Whisper's normalisation. Lag, per segment (the i-th final of each protocol is the same segment of
   captioner's): first text = receive time of the segment's first partial / delta / partial turn (and
   the native stream's first stable word, which is what an OpenAI delta carries) minus the wall time
   at which the segment's first audio was sent; final = receive time of its final / completed /
   end-of-turn minus the wall time its last audio was sent (both audio times from the native
   stream's own events: the same audio for both clients).
2. Files. Each clip uploaded to POST /v1/audio/transcriptions (json): WER; and a 60 s file made of
   clips: turnaround (upload to answer, median of 3).
3. Load. Four native streams at real-time pace (`captioner soak`, tools/soak.py) for --load-s
   seconds alone, then again while two clients each upload 60 s files one after another all along:
   final lag p95 of the live streams, and the files transcribed meanwhile.

Without --url it starts `captioner serve` (tiny.en, --threads 2) on a free loopback port.
Writes bench/results/apis.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import time
from dataclasses import dataclass, field

import harness
import httpx
import numpy as np
import soundfile as sf
import torch
import torchaudio
from websockets.asyncio.client import connect

from captioner.stream.audio import SAMPLE_RATE
from captioner.tools import soak
from captioner.tools.evaluate import Clip, WordErrors, word_errors

APIS = ("openai-realtime", "openai-realtime-16k", "assemblyai")
FRAME_S = 0.1
REALTIME_RATE = 24000
FILE_S = 60.0
TAIL_S = 30.0  # how long a client waits for its last finals after the audio, at most
QUIET_S = 1.5  # OpenAI: no event this long after the last commit, every item completed: the stream is done


@dataclass
class Heard:
    """What one client heard of one clip: final texts in order, and when each segment's first text and final
    came (wall seconds since its audio started)."""

    finals: list[str] = field(default_factory=list)
    first_at: list[float] = field(default_factory=list)
    final_at: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # native only: each segment's audio start and end, seconds
    ends: list[float] = field(default_factory=list)
    stable_at: list[float] = field(default_factory=list)  # native only: when each segment's first stable word came
    items: set[str] = field(default_factory=set)  # OpenAI only: items whose first text has come


async def paced(ws, frames: list[bytes], began: float, as_text: bool = False) -> None:
    for k, frame in enumerate(frames):
        delay = began + k * FRAME_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()})
                      if as_text else frame)


def pcm16(audio: np.ndarray, rate: int = SAMPLE_RATE) -> list[bytes]:
    data = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(rate * FRAME_S) * 2
    return [data[i : i + step] for i in range(0, len(data), step)]


async def native(url: str, audio: np.ndarray, began: float) -> Heard:
    heard, segment, ended, stable = Heard(), None, False, None
    async with connect(f"{url}/v1/stream") as ws:
        sender = asyncio.create_task(paced(ws, pcm16(audio), began))
        while True:
            if sender.done() and not ended:
                await ws.send(json.dumps({"type": "end"}))
                ended = True
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
            except TimeoutError:
                continue
            now = time.monotonic() - began
            if message["type"] == "partial" and message["text"] and message["segment"] != segment:
                segment = message["segment"]
                heard.first_at.append(now)
                heard.starts.append(message["start"])
            if message["type"] == "partial" and message["stable"].strip() and message["segment"] != stable:
                stable = message["segment"]
                heard.stable_at.append(now)
            elif message["type"] == "final" and message["text"]:
                if message["segment"] != segment:  # a final without a partial first
                    heard.first_at.append(now)
                    heard.starts.append(message["start"])
                if message["segment"] != stable:
                    heard.stable_at.append(now)
                segment = stable = None
                heard.finals.append(message["text"])
                heard.final_at.append(now)
                heard.ends.append(message["end"])
            elif message["type"] == "done":
                break
        await sender
    return heard


async def openai_realtime(url: str, audio: np.ndarray, began: float, rate: int = REALTIME_RATE) -> Heard:
    """Ends when the audio is in, committed, and every item begun is completed, with QUIET_S without an event (with
    server VAD, a commit of audio whose speech is already an item makes no event)."""
    heard, started, completed = Heard(), set(), set()
    resampled = torchaudio.functional.resample(torch.from_numpy(audio), SAMPLE_RATE, rate).numpy() \
        if rate != SAMPLE_RATE else audio
    async with connect(f"{url}/v1/realtime?intent=transcription",
                       additional_headers={"Authorization": "Bearer bench"}) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": rate},
            "transcription": {"model": "whisper-1", "language": "en"}}}}}))
        sender = asyncio.create_task(paced(ws, pcm16(resampled, rate), began, as_text=True))
        committed, last_event, deadline = False, time.monotonic(), None
        while True:
            if sender.done() and not committed:
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                committed, deadline = True, time.monotonic() + TAIL_S
            try:
                text = await asyncio.wait_for(ws.recv(), 0.1)
            except TimeoutError:
                text = None
            now = time.monotonic() - began
            if text is not None:
                last_event = time.monotonic()
                event = json.loads(text)
                kind, item = event["type"], event.get("item_id")
                if kind == "input_audio_buffer.speech_started":
                    started.add(item)
                elif kind.endswith("input_audio_transcription.delta") and item not in heard.items \
                        and event["delta"]:
                    heard.items.add(item)
                    heard.first_at.append(now)
                elif kind.endswith("input_audio_transcription.completed"):
                    completed.add(item)
                    if event["transcript"]:
                        if item not in heard.items:
                            heard.items.add(item)
                            heard.first_at.append(now)
                        heard.finals.append(event["transcript"])
                        heard.final_at.append(now)
                elif kind == "error" and event["error"].get("code") != "input_audio_buffer_commit_empty":
                    raise RuntimeError(f"openai realtime error: {event}")
            if committed and (started <= completed and time.monotonic() - last_event > QUIET_S
                              or time.monotonic() > deadline):
                break
        await sender
    return heard


async def assemblyai(url: str, audio: np.ndarray, began: float) -> Heard:
    heard, seen = Heard(), set()
    async with connect(f"{url}/v3/ws?sample_rate={SAMPLE_RATE}&encoding=pcm_s16le&format_turns=true",
                       additional_headers={"Authorization": "bench"}) as ws:
        sender = asyncio.create_task(paced(ws, pcm16(audio), began))
        terminated = False
        while True:
            if sender.done() and not terminated:
                await ws.send(json.dumps({"type": "Terminate"}))
                terminated = True
            try:
                text = await asyncio.wait_for(ws.recv(), 0.2)
            except TimeoutError:
                continue
            message, now = json.loads(text), time.monotonic() - began
            if message.get("type") == "Turn":
                if message["turn_order"] not in seen and message["words"]:
                    seen.add(message["turn_order"])
                    heard.first_at.append(now)
                if message["end_of_turn"] and message["turn_is_formatted"] and message["transcript"]:
                    heard.finals.append(message["transcript"])
                    heard.final_at.append(now)
            elif message.get("type") == "Termination":
                break
        await sender
    return heard


async def pair(url: str, audio: np.ndarray, api: str, turn: int) -> tuple[Heard, Heard]:
    """The clip through the native client and one API's at once; which connects first alternates with `turn`."""
    began = time.monotonic() + 0.2
    clients = {"openai-realtime": lambda: openai_realtime(url, audio, began),
               "openai-realtime-16k": lambda: openai_realtime(url, audio, began, SAMPLE_RATE),
               "assemblyai": lambda: assemblyai(url, audio, began)}
    if turn % 2:
        other, reference = await asyncio.gather(clients[api](), native(url, audio, began))
    else:
        reference, other = await asyncio.gather(native(url, audio, began), clients[api]())
    return reference, other


def lags(heard: Heard, reference: Heard) -> tuple[list[float], list[float]]:
    """First-text and final lags of a client's segments, timed against the native stream's audio times; none for a
    clip whose segments do not pair one to one."""
    if len(heard.finals) != len(reference.finals) or len(heard.first_at) != len(reference.starts):
        return [], []
    return ([at - start for at, start in zip(heard.first_at, reference.starts)],
            [at - end for at, end in zip(heard.final_at, reference.ends)])


def streams_through(url: str, api: str, clips: list[Clip], audios: dict[str, torch.Tensor]) -> dict:
    """Every clip through the native client and one API's at once: WER, first-text and final lag of both."""
    errors = {"native": WordErrors(0, 0), api: WordErrors(0, 0)}
    first: dict[str, list[float]] = {"native": [], "native-stable": [], api: []}
    final: dict[str, list[float]] = {"native": [], api: []}
    unpaired = 0
    for n, clip in enumerate(clips, 1):
        reference, other = asyncio.run(pair(url, audios[clip.id].numpy(), api, n))
        for name, heard in (("native", reference), (api, other)):
            errors[name] += word_errors(clip.text, " ".join(heard.finals))
            one, two = lags(heard, reference)
            first[name] += one
            final[name] += two
        unpaired += bool(reference.finals) and not lags(other, reference)[1]
        if len(reference.stable_at) == len(reference.starts):  # the first stable word, as OpenAI's deltas carry
            first["native-stable"] += [at - start for at, start in zip(reference.stable_at, reference.starts)]
        print(f"{api} {n}/{len(clips)} {clip.id}: " + ", ".join(f"{k} {v.wer:.3f}" for k, v in errors.items()),
              flush=True)
    return {"wer": {name: round(100 * e.wer, 2) for name, e in errors.items()},
            "first_text_lag": {name: {"p50": p(v, 50), "p95": p(v, 95), "n": len(v)} for name, v in first.items()},
            "final_lag": {name: {"p50": p(v, 50), "p95": p(v, 95), "n": len(v)} for name, v in final.items()},
            "unpaired_clips": unpaired}


def upload(http: str, audio: np.ndarray, name: str = "clip.wav") -> tuple[str, float]:
    out = io.BytesIO()
    sf.write(out, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    started = time.monotonic()
    response = httpx.post(f"{http}/v1/audio/transcriptions", headers={"Authorization": "Bearer bench"},
                          files={"file": (name, out.getvalue())}, data={"model": "whisper-1"}, timeout=600)
    response.raise_for_status()
    return response.json()["text"], time.monotonic() - started


def p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def sixty_seconds(clips: list[Clip], audios: dict[str, torch.Tensor]) -> np.ndarray:
    pieces, total = [], 0.0
    for clip in clips:
        pieces.append(audios[clip.id].numpy())
        total += len(pieces[-1]) / SAMPLE_RATE
        if total >= FILE_S:
            break
    return np.concatenate(pieces)[: int(FILE_S * SAMPLE_RATE)]


async def load(url: str, clips: list[Clip], seconds: float, file: np.ndarray | None) -> dict:
    """Four live streams for `seconds`; with `file`, two clients upload it one after another all the while."""
    http = url.replace("ws://", "http://")
    stop = asyncio.Event()
    turnarounds: list[float] = []

    async def uploader(k: int) -> None:
        await asyncio.sleep(5 + 2 * k)
        while not stop.is_set():
            _, took = await asyncio.to_thread(upload, http, file)
            turnarounds.append(took)

    uploaders = [asyncio.create_task(uploader(k)) for k in range(2)] if file is not None else []
    level = await soak.soak(url, clips, 4, seconds, ramp=1.0)
    stop.set()
    await asyncio.gather(*uploaders)
    summary = level.summarize()
    return {"final_lag_p50": summary.final_lag_p50, "final_lag_p95": summary.final_lag_p95,
            "partial_lag_p95": summary.partial_lag_p95, "behind": summary.behind,
            "files": len(turnarounds), "file_turnaround_p50": p(turnarounds, 50)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="the first N clips only")
    parser.add_argument("--kinds", nargs="+", default=None, help="clips of these kinds only (short, long, hard)")
    parser.add_argument("--load-s", type=float, default=60.0, help="seconds of each load run")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-streams", action="store_true", help="files and load only")
    parser.add_argument("--url", default=None, help="an already running server, open to any key (default: start one)")
    args = parser.parse_args()
    clips = harness.read_clips(limit=args.limit, kinds=args.kinds)
    audios = harness.read_audio(clips)
    report: dict = {"clips": len(clips)}
    with harness.serving(["--threads", "2", "--log-format", "text", "--max-sessions", "64"], args.url) as url:
        http = url.replace("ws://", "http://")
        report["pairs"] = {} if args.skip_streams else {api: streams_through(url, api, clips, audios) for api in APIS}
        file = WordErrors(0, 0)
        for clip in clips:  # each clip a file of its own; against the native streams' WER of the pairings
            file += word_errors(clip.text, upload(http, audios[clip.id].numpy())[0])
        report["file_wer"] = round(100 * file.wer, 2)
        sixty = sixty_seconds(clips * 10, audios)
        report["file_turnaround_60s"] = round(statistics.median(upload(http, sixty)[1] for _ in range(3)), 2)
        if not args.skip_load:
            load_clips = [c for c in clips if c.kind != "hard" and c.duration < 30] or clips
            report["load_alone"] = asyncio.run(load(url, load_clips, args.load_s, None))
            time.sleep(3)
            report["load_with_files"] = asyncio.run(load(url, load_clips, args.load_s, sixty))
    meta = harness.metadata(url=args.url or "captioner serve --threads 2 (started by bench/apis.py)")
    path = harness.write_json(harness.RESULTS / "apis.json", {**meta, **report})
    rows = []
    for api, pair_report in report["pairs"].items():
        for name in ("native", api):
            first, final = pair_report["first_text_lag"][name], pair_report["final_lag"][name]
            rows.append((f"{name} (beside {api})" if name == "native" else name, pair_report["wer"][name],
                         f"{first['p50']} / {first['p95']}", f"{final['p50']} / {final['p95']}"))
    print(harness.table(["stream", "WER %", "first text p50 / p95 s", "final p50 / p95 s"], rows))
    print(f"\nfile WER {report['file_wer']} %")
    print(f"\n60 s file turnaround (median of 3): {report['file_turnaround_60s']:.2f} s")
    for key in ("load_alone", "load_with_files"):
        if key in report:
            print(key, json.dumps(report[key]))
    print(f"\n{path}")


if __name__ == "__main__":
    main()
