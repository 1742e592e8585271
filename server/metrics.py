"""Prometheus metrics of one server (its own registry, so that tests can run several servers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, generate_latest

__all__ = ["Metrics"]

LAG_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # CPU seconds and memory, for soak reports and dashboards
        self.sessions = Gauge("captioner_active_sessions", "Open streaming sessions", registry=r)
        self.audio = Counter("captioner_audio_seconds", "Audio received, in seconds", registry=r)
        self.captions = Counter("captioner_captions", "Caption events sent", ["kind"], registry=r)
        self.lag = Histogram("captioner_caption_lag_seconds",
                             "Send time minus arrival time of the audio the caption ends with",
                             ["kind"], buckets=LAG_BUCKETS, registry=r)
        self.load = Gauge("captioner_load", "Busy share of the inference workers' time over the capacity window, 0-1",
                          registry=r)
        self.capacity_used = Gauge("captioner_capacity_used", "The load the open streams and one more would make, "
                                   "at their measured cost, over max_load: at 1 or above, new streams are refused",
                                   registry=r)
        self.queue = Gauge("captioner_scheduler_queue_depth", "Sessions with model work waiting", registry=r)
        self.batch = Histogram("captioner_batch_size", "Jobs per model pass", ["kind"],
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.inference = Histogram("captioner_inference_seconds", "Time of one model pass", ["kind"],
                                   buckets=TIME_BUCKETS, registry=r)
        self.greedy_finals = Counter("captioner_greedy_finals", "Finals decoded greedily (not with beam search) "
                                     "because the server was behind real time", registry=r)
        self.continuations = Counter("captioner_final_continuations", "Decoding passes that went on over voiced "
                                     "audio a final's words did not cover, and were kept", registry=r)
        self.final_words = Counter("captioner_final_words", "Words changed by the coverage checks of finals: added "
                                   "by continuations, removed (no audio backs them), or kept unbacked because they "
                                   "were already shown as stable", ["outcome"], registry=r)
        self.rejections = Counter("captioner_rejections", "Streams refused or closed by the server",
                                  ["reason"], registry=r)
        self.mqtt_dropped = Counter("captioner_mqtt_dropped", "MQTT messages dropped by a full queue", ["kind"],
                                    registry=r)
        self.connections = Gauge("captioner_protocol_connections", "Open stream connections, by protocol",
                                 ["protocol"], registry=r)
        self.requests = Counter("captioner_http_requests", "HTTP API requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.files = Gauge("captioner_file_jobs", "Uploaded files being transcribed", registry=r)
        self.file_audio = Counter("captioner_file_audio_seconds", "Audio of uploaded files, in seconds", registry=r)
        self.turnaround = Histogram("captioner_file_turnaround_seconds", "Time from an upload's last byte to its "
                                    "response's last byte", buckets=LAG_BUCKETS + (20.0, 30.0, 60.0, 120.0), registry=r)
        self.viewers = Gauge("captioner_viewers", "Caption viewers connected, by topic", ["topic"], registry=r)
        self.viewer_drops = Counter("captioner_viewer_drops", "Viewers disconnected by the server, by reason",
                                    ["reason"], registry=r)
        self.fanout = Histogram("captioner_feed_fanout_seconds", "Time from a caption event's arrival in its topic's "
                                "feed to its write to the last viewer", buckets=TIME_BUCKETS, registry=r)
        self.youtube_posts = Counter("captioner_youtube_posts", "Posts to YouTube Live caption ingestion, by topic "
                                     "and outcome (ok, failed)", ["topic", "outcome"], registry=r)
        self.youtube_pending = Gauge("captioner_youtube_pending", "Finals waiting to be posted to YouTube, by topic",
                                     ["topic"], registry=r)
        self.youtube_dropped = Counter("captioner_youtube_dropped", "Finals dropped by a full YouTube queue, by topic",
                                       ["topic"], registry=r)
        self.build = Info("captioner_build", "Model and version", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
