"""The `captioner` command: serve, transcribe, eval and the client tools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from captioner.model.errors import CaptionerError
from captioner.model.loading import DTYPES

__all__ = ["main"]

log = logging.getLogger("captioner")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except CaptionerError as e:
        print(f"captioner: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Live captions from speech, with Whisper.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_transcribe(commands)
    _add_eval(commands)
    _add_replay(commands)
    _add_soak(commands)
    _add_listen(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction) -> None:
    from captioner.server.settings import setting_docs

    p = commands.add_parser(
        "serve", help="run the live-caption service",
        description="Run the streaming service: WebSocket streams (native /v1/stream, Vosk at /, Deepgram at "
        "/v1/listen), /healthz, /readyz, /metrics and the caption page at /. Every option can also be set as "
        "CAPTIONER_<OPTION> in the environment or as a key in a TOML file (--config).",
    )
    p.add_argument("--config", default=None,
                   help="TOML file of settings, keys as the long options with _ (default: none)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for doc in setting_docs():
        group = groups.get(doc.group) or groups.setdefault(doc.group, p.add_argument_group(doc.group.lower()))
        flag = "--" + doc.name.replace("_", "-")
        default = "none" if doc.default in (None, ()) else doc.default
        if doc.kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{doc.help} (default: {'on' if default else 'off'})")
        else:  # converted, checked and reported with the TOML file's and the environment's values
            comma = "; comma-separated" if "tuple" in doc.kind else ""
            group.add_argument(flag, default=None, metavar=doc.name.upper(),
                               help=f"{doc.help}{comma}" + ("" if "default:" in doc.help else f" (default: {default})"))
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from captioner.server.app import App
    from captioner.server.logs import configure_logging
    from captioner.server.settings import load_settings, setting_docs

    overrides = {doc.name: getattr(args, doc.name) for doc in setting_docs()}
    try:
        settings = load_settings(overrides, args.config)
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(f"captioner: error: {e}") from None

    async def main() -> None:
        app = App(settings)
        configure_logging(settings.log_format, app.model.name, f"{app.model.checksum}")
        await app.start()
        app.handle_signals()
        scheme = "wss" if settings.certfile else "ws"
        print(f"captioner: serving {app.model.name} at {scheme}://{settings.host}:{app.port}/v1/stream "
              f"(page: {'https' if settings.certfile else 'http'}://{settings.host}:{app.port}/)", file=sys.stderr,
              flush=True)
        await app.run()

    asyncio.run(main())
    # Drained and stopped. The listener has stayed open (draining answers 503, never a refused connection):
    # exit now rather than after the second or so the interpreter takes to tear torch down, during which
    # a connection would be accepted by the kernel and never answered.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint path (default: the bundled tiny.en)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    parser.add_argument(
        "--dtype", default=None, choices=list(DTYPES), help="default: float16 on GPU, bfloat16 on CPU"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: all cores)")


def _load(args: argparse.Namespace):  # noqa: ANN202
    from captioner.model.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model, args.device, DTYPES[args.dtype] if args.dtype else None)


def _add_transcribe(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("transcribe", help="transcribe an audio file", description="Transcribe an audio file.")
    p.add_argument("file", type=Path)
    p.add_argument("--format", default="text", choices=["text", "json", "jsonl", "srt", "vtt"],
                   help="default: %(default)s; jsonl (every event, with --stream)")
    p.add_argument("--beam", type=int, default=5, help="beam size; 1 decodes greedily (default: %(default)s)")
    p.add_argument("--word-timestamps", action="store_true", help="add word times (json)")
    p.add_argument("--stream", action="store_true",
                   help="run the file through a streaming session on a simulated real-time clock")
    p.add_argument("--chunk-ms", type=int, default=100, help="with --stream: audio per chunk (default: %(default)s)")
    p.add_argument("--strategy", default="window", choices=["window", "cached"],
                   help="with --stream: partial-update encoder (default: %(default)s)")
    _add_model_options(p)
    p.set_defaults(run=_run_transcribe)


def _run_transcribe(args: argparse.Namespace) -> int:
    from captioner.stream.audio import load_audio
    from captioner.tools.formats import transcript_to
    from captioner.tools.transcribe import TranscribeOptions, transcribe

    audio = load_audio(args.file)
    model = _load(args)
    if args.stream:
        return _stream_file(model, audio, args)
    if args.format == "jsonl":
        raise SystemExit("captioner: error: --format jsonl needs --stream")
    options = TranscribeOptions(beam_size=args.beam, word_timestamps=args.word_timestamps)
    result = transcribe(model, audio, options)
    sys.stdout.write(transcript_to(result, args.format))
    return 0


def _stream_file(model, audio: torch.Tensor, args: argparse.Namespace) -> int:  # noqa: ANN001
    from captioner.stream.config import StreamConfig
    from captioner.stream.engine import Engine
    from captioner.stream.events import Final, event_to_dict
    from captioner.tools.formats import cues_to_srt, cues_to_vtt
    from captioner.tools.simulate import simulate

    engine = Engine(model, StreamConfig(strategy=args.strategy))
    (timed,), _ = simulate(engine, [audio], chunk_s=args.chunk_ms / 1000)
    finals = [e for _, e in timed.events if isinstance(e, Final) and e.text]
    if args.format == "jsonl":
        for t, event in timed.events:
            sys.stdout.write(json.dumps({**event_to_dict(event), "t": round(t, 3)}) + "\n")
    elif args.format in ("text", "json"):
        text = " ".join(f.text for f in finals)
        sys.stdout.write(text + "\n" if args.format == "text" else json.dumps(
            {"text": text, "finals": [event_to_dict(f) for f in finals]}, indent=1) + "\n")
    else:
        cues = [(f.start, f.end, f.text) for f in finals]
        sys.stdout.write(cues_to_srt(cues) if args.format == "srt" else cues_to_vtt(cues))
    return 0


def _add_eval(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval", help="score transcription against a manifest", description="Word error rate over a manifest."
    )
    p.add_argument("manifest", type=Path, help="JSON lines: id, audio, text (paths relative to the manifest)")
    p.add_argument("--limit", type=int, default=None, help="first N clips only")
    p.add_argument("--beam", type=int, default=5, help="beam size; 1 decodes greedily (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("eval-results.json"), help="results file (default: %(default)s)")
    _add_model_options(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioner.stream.audio import load_audio
    from captioner.tools.evaluate import WordErrors, read_manifest, word_errors
    from captioner.tools.transcribe import TranscribeOptions, transcribe

    clips = read_manifest(args.manifest, args.limit)
    model = _load(args)
    options = TranscribeOptions(beam_size=args.beam)
    rows = []
    total = WordErrors(0, 0)
    by_corpus: dict[str, WordErrors] = {}
    audio_seconds = compute_seconds = 0.0
    progress = tqdm(clips, unit="clip", file=sys.stderr)
    for clip in progress:
        audio = load_audio(clip.audio)
        started = time.perf_counter()
        text = transcribe(model, audio, options).text
        elapsed = time.perf_counter() - started
        errors = word_errors(clip.text, text)
        total += errors
        by_corpus[clip.corpus] = by_corpus.get(clip.corpus, WordErrors(0, 0)) + errors
        audio_seconds += len(audio) / 16000
        compute_seconds += elapsed
        rows.append({"id": clip.id, "corpus": clip.corpus, "reference": clip.text, "hypothesis": text,
                     "wer": errors.wer, "errors": errors.errors, "words": errors.words,
                     "audio_s": len(audio) / 16000, "compute_s": elapsed})
        progress.set_postfix(wer=f"{100 * total.wer:.1f}%", rtf=f"{compute_seconds / audio_seconds:.3f}")
    summary = {
        "model": model.name, "checksum": model.checksum, "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device), "beam": args.beam, "clips": len(rows), "wer": total.wer,
        "rtf": compute_seconds / audio_seconds if audio_seconds else 0.0, "audio_s": audio_seconds,
        "corpora": {name: {"wer": e.wer, "words": e.words} for name, e in sorted(by_corpus.items())},
    }
    args.out.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1))
    print(f"WER {100 * total.wer:.2f}% over {len(rows)} clips ({total.words} words), "
          f"real-time factor {summary['rtf']:.3f}")
    for name, e in sorted(by_corpus.items()):
        print(f"  {100 * e.wer:6.2f}%  {name} ({e.words} words)")
    print(f"results: {args.out}")
    return 0
def _add_server_options(p: argparse.ArgumentParser) -> None:
    """Where the client tools connect, and how."""
    p.add_argument("--url", default="ws://127.0.0.1:8765", help="server: its base URL or the /v1/stream URL it "
                   "prints (default: %(default)s)")
    p.add_argument("--token", default=None, help="access token (default: $CAPTIONER_TOKEN)")
    p.add_argument("--cafile", default=None, help="CA certificate to trust for wss:// (default: the system's)")


def _add_replay(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "replay", help="stream an audio file (or a manifest's clips) to a server and show the captions",
        description="Stream audio files to a captioner server at real-time pace and show the live captions.",
    )
    p.add_argument("file", type=Path, help="an audio file, or a manifest (.jsonl) to replay clip by clip with WER")
    _add_server_options(p)
    p.add_argument("--speed", type=float, default=1.0, help="x real time; 0 sends as fast as the server reads "
                   "(default: %(default)s)")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default: %(default)s)")
    p.add_argument("--format", default="text", choices=["text", "json", "srt", "vtt"],
                   help="what goes to stdout: live text, or the finished captions as json, srt or vtt "
                   "(default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="also write FILE.txt, .srt, .vtt and .json (every "
                   "message with its receive time) into this folder")
    p.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from captioner.stream.audio import load_audio
    from captioner.tools.evaluate import WordErrors, percentile, read_manifest, word_errors
    from captioner.tools.formats import cues_to_srt, cues_to_vtt
    from captioner.tools.replay import Replay, ReplayError, replay

    token = args.token or os.environ.get("CAPTIONER_TOKEN")
    manifest = args.file.suffix == ".jsonl"
    clips = read_manifest(args.file) if manifest else [None]
    live = _LiveView(sys.stdout if args.format == "text" and not manifest else sys.stderr)
    total, lags = WordErrors(0, 0), []
    for clip in clips:
        path = clip.audio if clip else args.file
        audio = load_audio(path).numpy()
        try:
            result: Replay = asyncio.run(replay(args.url, audio, speed=args.speed, chunk_ms=args.chunk_ms,
                                                token=token, cafile=args.cafile, on_message=live.show))
        except ReplayError as e:
            print(f"captioner: error: {e}", file=sys.stderr)
            return 1
        live.close()
        if result.error:
            print(f"captioner: the server closed the stream ({result.close_code}): {result.error['code']}: "
                  f"{result.error['message']}", file=sys.stderr)
        finals = [m for m in result.finals if m["text"]]
        cues = [(m["start"], m["end"], m["text"]) for m in finals]
        documents = {"txt": result.text + "\n", "srt": cues_to_srt(cues), "vtt": cues_to_vtt(cues),
                     "json": json.dumps({"file": str(path), "speed": args.speed, "close_code": result.close_code,
                                         "messages": [{"t": round(t, 3), **m} for t, m in result.messages]},
                                        indent=1) + "\n"}
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for ext, body in documents.items():
                (args.out / f"{Path(path).stem}.{ext}").write_text(body)
        if args.format != "text":
            sys.stdout.write(documents[args.format])
        if args.speed:
            lags += result.lags("final")
        if clip:
            errors = word_errors(clip.text, result.text)
            total += errors
            print(f"{clip.id}: WER {100 * errors.wer:.1f}% ({errors.errors}/{errors.words})", flush=True)
        elif result.error:
            return 1
    if manifest:
        print(f"WER {100 * total.wer:.2f}% over {len(clips)} clips ({total.words} words)")
    if lags:
        print(f"final lag: p50 {percentile(lags, 50):.2f} s, p95 {percentile(lags, 95):.2f} s, "
              f"max {max(lags):.2f} s", file=sys.stderr)
    return 0


def _add_soak(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "soak", help="latency soak: N real-time clients against a server, with a report",
        description="Stream real speech from N real-time clients (ramped up) to a running server for a set "
        "time, scrape its /metrics, and write a report (JSON, Markdown, PNG plots). With --sweep, run one "
        "soak per level and find the largest number of streams that holds the lag target.",
    )
    _add_server_options(p)
    p.add_argument("--streams", type=int, default=4, help="concurrent clients, 1 to 256 (default: %(default)s)")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the clients join "
                   "(default: %(default)s)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of audio each client streams, "
                   "5 to 3600 (default: %(default)s)")
    p.add_argument("--manifest", type=Path, default=Path("samples/manifest.jsonl"),
                   help="clips to stream (JSON lines: id, audio, text) (default: %(default)s)")
    p.add_argument("--report", type=Path, default=Path("soak-report"), help="report folder (default: %(default)s)")
    p.add_argument("--sweep", default=None, help="comma-separated levels of N, e.g. 1,2,4,8,16: one soak each, "
                   "stopping after the first that misses the target")
    p.add_argument("--target", type=float, default=2.0, help="final-lag p95 target in seconds "
                   "(default: %(default)s)")
    p.add_argument("--metrics-url", default=None, help="the server's /metrics (default: on the --url host and "
                   "port; give it when the server has an --admin-port)")
    p.set_defaults(run=_run_soak)


def _run_soak(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from tqdm import tqdm

    from captioner.tools import soak
    from captioner.tools.evaluate import percentile, read_manifest
    from captioner.tools.replay import ReplayError

    try:
        levels = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.streams]
    except ValueError:
        raise SystemExit(f"captioner: error: --sweep takes numbers like 1,2,4,8, not {args.sweep!r}") from None
    if not all(1 <= n <= 256 for n in levels) or not 5 <= args.duration <= 3600 or args.ramp < 0:
        raise SystemExit("captioner: error: streams must be 1 to 256, duration 5 to 3600 s, ramp >= 0")
    if not args.manifest.is_file():
        raise SystemExit(f"captioner: error: no manifest at {args.manifest} (give --manifest)")
    clips = read_manifest(args.manifest)
    token = args.token or os.environ.get("CAPTIONER_TOKEN")
    try:  # fail fast, with one line, when nothing listens there
        asyncio.run(_probe(args.url, token, args.cafile))
    except ReplayError as e:
        print(f"captioner: error: {e}", file=sys.stderr)
        return 1
    done: list = []
    for n in levels:
        bar = tqdm(total=round(args.ramp + args.duration), unit="s", file=sys.stderr, desc=f"{n} streams",
                   bar_format="{desc}: {n_fmt}/{total_fmt} s |{bar}| {postfix}")

        def tick(t: float, level: soak.Level, bar: tqdm = bar) -> None:
            recent = [lag for c in level.clients for at, lag in c.finals if at > t - 30]
            p50, p95 = percentile(recent, 50), percentile(recent, 95)
            bar.n = min(bar.total, round(t))
            bar.set_postfix_str(
                f"sessions {sum(1 for c in level.clients if c.error is None)}/{n}, final lag (30 s) "
                + (f"p50 {p50:.2f} p95 {p95:.2f} s" if recent else "-")
                + f", errors {sum(1 for c in level.clients if c.error)}")

        level = asyncio.run(soak.soak(args.url, clips, n, args.duration, ramp=args.ramp, target_s=args.target,
                                      token=token, cafile=args.cafile, on_tick=tick, metrics=args.metrics_url))
        bar.close()
        done.append(level)
        summary = level.summary()
        print(f"{n} streams: final lag p50 {_s(summary['final_lag_p50'])} p95 {_s(summary['final_lag_p95'])}, "
              f"behind {summary['behind']}, errors {summary['errors'] or 0}: "
              f"{'holds' if summary['holds'] else 'misses'} the target", file=sys.stderr)
        if not summary["holds"] and len(levels) > 1:
            break
        if len(levels) > 1:
            time.sleep(3)  # let the server close the last sessions
    meta = {"url": args.url, "manifest": str(args.manifest), "clips": len(clips), "ramp_s": args.ramp,
            "duration_s": args.duration, "date": time.strftime("%Y-%m-%d %H:%M")}
    report = soak.write_report(args.report, done, meta)
    if len(levels) > 1:
        print(f"largest number of streams that holds the target: {soak.largest_holding(done) or 'none'}")
    print(f"report: {report}")
    return 0


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


async def _probe(url: str, token: str | None, cafile: str | None) -> None:
    import numpy as np

    from captioner.tools.replay import replay

    await replay(url, np.zeros(1600, dtype=np.float32), speed=0, token=token, cafile=cafile)


def _add_listen(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("listen", help="print a session's live captions from the MQTT broker",
                            description="Watch the captions of a session through the MQTT broker.")
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883", help="broker (default: %(default)s)")
    p.add_argument("--topic", default="+", help="the session's topic (?topic= of its client, or its session "
                   "id); + for every session (default: %(default)s)")
    p.add_argument("--prefix", default="captioner", help="topic prefix (default: %(default)s)")
    p.set_defaults(run=_run_listen)


def _run_listen(args: argparse.Namespace) -> int:
    import asyncio

    import aiomqtt

    from captioner.server.mqtt import parse_mqtt_url

    try:
        client_args = parse_mqtt_url(args.mqtt_url)
    except ValueError as e:
        print(f"captioner: error: {e}", file=sys.stderr)
        return 2
    live = _LiveView(sys.stdout)

    async def watch() -> None:
        async with aiomqtt.Client(**client_args) as client:
            await client.subscribe(f"{args.prefix}/{args.topic}/+", qos=1)
            async for message in client.messages:
                payload = json.loads(message.payload)
                if payload.get("type") in ("partial", "final"):
                    live.show(0.0, payload)

    try:
        asyncio.run(watch())
    except aiomqtt.MqttError as e:
        print(f"captioner: error: MQTT broker {args.mqtt_url}: {e}", file=sys.stderr)
        return 1
    return 0


class _LiveView:
    """Live captions on a terminal: finals printed once, the open segment's partial rewritten in place
    with its unstable tail dimmed; on a pipe, finals only, one per line."""

    def __init__(self, out) -> None:  # noqa: ANN001
        self.out = out
        self.tty = out.isatty()
        self.open = False

    def show(self, t: float, message: dict) -> None:
        kind = message.get("type")
        if kind == "final" and message["text"]:
            self._line(message["text"] + "\n")
        elif kind == "partial" and self.tty:
            import shutil

            stable, text = message["stable"], message["text"]
            width = shutil.get_terminal_size().columns - 1  # a wrapped line could not be rewritten in place
            cut = max(0, len(text) - width)
            self._line(f"{stable[cut:]}\x1b[2m{text[max(cut, len(stable)):]}\x1b[0m", partial=True)

    def _line(self, text: str, partial: bool = False) -> None:
        if self.tty and self.open:
            self.out.write("\r\x1b[K")
        self.out.write(text)
        self.out.flush()
        self.open = partial

    def close(self) -> None:
        if self.tty and self.open:
            self.out.write("\r\x1b[K")
            self.open = False


if __name__ == "__main__":
    raise SystemExit(main())
