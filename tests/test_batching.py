"""The batching policy (stream/batching.py): what runs next for many streams, without the model."""

from __future__ import annotations

from dataclasses import replace

import torch

from captioner.stream.batching import EARLY_S, BatchPolicy, Due
from captioner.stream.config import StreamConfig
from captioner.stream.jobs import FinalJob, UpdateJob


def final(key: str, late: float = 0.0) -> Due[str]:
    return Due(key, FinalJob(torch.zeros(80, 2), [], [], 10), late)


def update(key: str, late: float = 0.0) -> Due[str]:
    return Due(key, UpdateJob(torch.zeros(80, 2), [], [], [], 10), late)


def test_on_a_cpu_finals_come_first_one_per_pass_then_the_longest_waiting_update():
    policy = BatchPolicy(StreamConfig())
    due = [update("a", 0.2), final("b"), update("c", 0.9), update("d", 0.5), final("e")]
    passes = policy.passes(due, behind=False)
    assert [(p.kind, [d.key for d in p.due], p.final_beam) for p in passes] == [
        ("final", ["b"], None), ("final", ["e"], None), ("partial", ["c"], None)]
    passes = BatchPolicy(StreamConfig(cpu_batch=2)).passes(due, behind=False)
    assert [[d.key for d in p.due] for p in passes] == [["b", "e"], ["c", "d"]]


def test_finals_go_in_batches_of_max_batch_and_a_gpu_takes_a_batch_of_partials():
    policy = BatchPolicy(StreamConfig(max_batch=4), on_gpu=True)
    due = [final(f"f{k}") for k in range(5)] + [update(f"u{k}", k / 10) for k in range(3)]
    passes = policy.passes(due, behind=False)
    assert [len(p.due) for p in passes] == [4, 1, 3]
    assert [d.key for p in passes if p.kind == "partial" for d in p.due] == ["u2", "u1", "u0"]


def test_behind_real_time_sheds_updates_and_decodes_finals_greedily():
    policy = BatchPolicy(StreamConfig(shed_after_s=0.5, shed_update_gap_s=1.5))
    assert not policy.behind([0.1, 0.5]) and policy.behind([0.1, 0.6]) and not policy.behind([])
    assert policy.shedding(False).min_update_gap_s == 0.0
    assert policy.shedding(True).min_update_gap_s == 1.5
    assert policy.shedding(False).skip_stale and policy.shedding(True).skip_stale
    (finals, partials) = policy.passes([final("a"), update("b")], behind=True)
    assert finals.final_beam == 1 and partials.final_beam is None
    assert policy.passes([], behind=True) == []
    ending = replace(final("c"), ending=True)  # a stream's last final after its end keeps the beam
    passes = policy.passes([final("a"), ending, update("b")], behind=True)
    assert [(p.kind, [d.key for d in p.due], p.final_beam) for p in passes] == [
        ("final", ["c"], None), ("final", ["a"], 1), ("partial", ["b"], None)]


def test_streams_sent_ahead_of_real_time_wait_while_real_time_streams_have_work():
    """A file replayed at speed (its oldest waiting audio due only seconds from now) cannot delay live
    streams; with nothing else due it runs at once."""
    policy = BatchPolicy(StreamConfig())
    fast = [final("fast", -5.0), update("fast-too", -3.0)]
    passes = policy.passes(fast + [update("live", 0.3), update("jitter", -EARLY_S)], behind=False)
    assert [[d.key for d in p.due] for p in passes] == [["live"]]
    assert [[d.key for d in p.due] for p in policy.passes(fast, behind=False)] == [["fast"], ["fast-too"]]
    assert not policy.behind([-5.0, 0.2])
