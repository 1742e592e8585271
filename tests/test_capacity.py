"""The capacity rule for new streams (server/capacity.py): measured model time, not a count of sessions."""

from __future__ import annotations

import asyncio
import json

import pytest
from client import read_pcm16, stream
from support import get
from websockets.exceptions import InvalidStatus

from captioner.server.capacity import Capacity, Room
from captioner.server.errors import Overloaded
from captioner.server.limits import Admission


def busy(capacity: Capacity, share: float, seconds: float, streams: int, workers: int = 1, since: float = 0.0
         ) -> None:
    """Record `share` of `workers` busy with `streams` open, in 0.1 s passes from `since` for `seconds`."""
    for k in range(round(seconds * 10)):
        capacity.record(0.1 * share * workers, since + 0.1 * (k + 1), streams)


def test_load_is_the_busy_share_of_the_workers_over_the_window():
    capacity = Capacity(workers=2, max_load=0.8, window_s=10.0, max_late_s=1.0)
    busy(capacity, 0.5, 30.0, streams=4, workers=2)
    assert capacity.load(30.0) == pytest.approx(0.5, abs=0.03)
    assert capacity.load(45.0) == 0.0  # nothing in the last window


def test_another_stream_fits_while_the_load_with_it_stays_under_max_load():
    capacity = Capacity(workers=2, max_load=0.8, window_s=10.0, max_late_s=1.0)
    busy(capacity, 0.5, 30.0, streams=4, workers=2)  # 0.125 a stream
    room = capacity.room(4, 0.0, 30.0)
    assert room.fits and room.projected == pytest.approx(0.625, abs=0.03) and room.used == pytest.approx(0.78, abs=0.04)
    assert not capacity.room(6, 0.0, 30.0).fits  # 7 would take 0.875
    full = Capacity(workers=2, max_load=0.6, window_s=10.0, max_late_s=1.0)
    busy(full, 0.5, 30.0, streams=4, workers=2)
    room = full.room(4, 0.0, 30.0)
    assert not room.fits and "busy" in room.reason and room.used > 1


def test_the_cost_counts_streams_for_the_time_they_were_open():
    capacity = Capacity(workers=1, max_load=0.8, window_s=10.0, max_late_s=1.0)
    busy(capacity, 0.4, 5.0, streams=4)  # 4 streams for 5 s, then 2 for 5 s: 30 stream-seconds for 4 s busy
    busy(capacity, 0.4, 5.0, streams=2, since=5.0)
    assert capacity.room(2, 0.0, 10.0).projected == pytest.approx(3 * 4 / 30, abs=0.02)


def test_without_a_measurement_or_a_rule_everything_fits_and_the_last_measure_stands_in():
    capacity = Capacity(workers=1, max_load=0.5, window_s=10.0, max_late_s=1.0)
    busy(capacity, 1.0, 5.0, streams=1)
    assert capacity.room(1, 0.0, 5.0).fits  # 5 stream-seconds: not a window's worth, nothing to go by
    assert Capacity(workers=1, max_load=0.0, window_s=10.0, max_late_s=1.0).room(50, 99.0, 30.0).fits
    busy(capacity, 1.0, 25.0, streams=1, since=5.0)
    assert capacity.room(1, 0.0, 30.0).projected == pytest.approx(2.0, abs=0.1)  # one stream took it all
    room = capacity.room(0, 0.0, 90.0)  # after a lull: the last measure says what a stream will take
    assert room.fits and room.projected == pytest.approx(1.0, abs=0.05) and not capacity.room(1, 0.0, 90.0).fits


def test_a_lower_cost_counts_only_as_the_higher_one_fades():
    """Streams that have only begun to speak cost little for a while: the door does not open wide at once."""
    capacity = Capacity(workers=1, max_load=0.8, window_s=10.0, max_late_s=1.0)
    busy(capacity, 0.8, 10.0, streams=4)  # 0.2 a stream
    assert capacity.room(4, 0.0, 10.0).projected == pytest.approx(1.0, abs=0.05)
    busy(capacity, 0.2, 10.0, streams=4, since=10.0)  # 0.05 a stream, 10 s later
    assert capacity.room(4, 0.0, 20.0).projected == pytest.approx(5 * 0.2 * 0.5 ** (10 / 60), abs=0.05)
    busy(capacity, 0.2, 300.0, streams=4, since=20.0)  # and so on for 5 minutes
    assert capacity.room(4, 0.0, 320.0).projected == pytest.approx(0.25, abs=0.03)


def test_a_stream_behind_real_time_closes_the_door():
    capacity = Capacity(workers=1, max_load=0.8, window_s=10.0, max_late_s=1.0)
    room = capacity.room(1, 1.5, 30.0)
    assert not room.fits and "behind" in room.reason


def test_a_busy_server_refuses_the_next_stream_with_503_and_reports_full(make_fake_server, samples):
    """Each pass of the fake model takes 0.3 s: one real-time stream keeps the one worker busy most of the
    time. With max_load 0.5 a second stream (twice the load) is refused before the upgrade (503 at_capacity, Retry-After),
    /readyz says full, and the first stream carries on to its last final."""
    server = make_fake_server(delay_s=0.3, workers=1, max_load=0.5, load_window_s=1.0, max_late_s=30.0)
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"], seconds=6)

    async def scenario():
        first = asyncio.create_task(stream(server.url, pcm, rate, pace=1.0))
        await asyncio.sleep(4.0)
        ready = await asyncio.to_thread(get, server.http + "/readyz")
        with pytest.raises(InvalidStatus) as refused:
            await stream(server.url, pcm[:3200], rate)
        return await first, ready, refused.value.response

    first, ready, response = asyncio.run(scenario())
    assert first.messages[-1]["type"] == "done" and first.finals
    state = json.loads(ready[1])
    assert ready[0] == 503 and state["full"] is True and state["load"] > 0.2 and state["capacity_used"] > 1
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert json.loads(response.body)["code"] == "at_capacity"
    metrics = get(server.http + "/metrics")[1]
    assert 'captioner_rejections_total{reason="at_capacity"} 1.0' in metrics and "captioner_load " in metrics


def test_a_stream_without_partials_costs_its_finals_alone():
    """Finals' passes take a third of the busy time: a stream with partials costs the whole, one without them only
    its finals; with max_load 0.8 and two streams open at 0.3 each, a third fits only without partials."""
    capacity = Capacity(workers=1, max_load=0.8, window_s=10.0, max_late_s=1.0)
    for k in range(300):  # 0.6 busy with 2 streams: 0.2 of it finals
        capacity.record(0.06, 0.1 * (k + 1), 2, final=k % 3 == 0)
    room = capacity.room(2, 0.0, 30.0)
    assert room.projected == pytest.approx(0.9, abs=0.03) and not room.fits and room.finals_fit
    assert not capacity.room(2, 1.5, 30.0).finals_fit  # a stream behind real time closes the door to both
    # a finals-only stream open beside one with partials: the measured partial cost is the one stream's
    other = Capacity(workers=1, max_load=0.8, window_s=10.0, max_late_s=1.0)
    for k in range(300):  # 0.4 busy: 0.2 finals (0.1 a stream), 0.2 partials (the one stream's)
        other.record(0.04, 0.1 * (k + 1), 2, finals_only=1, final=k % 2 == 0)
    assert other.room(2, 0.0, 30.0, finals_only=1).projected == pytest.approx(0.4 + 0.3, abs=0.03)
    # streams that all take finals only are measured too: a stream with partials would cost at most four times theirs
    finals_only = Capacity(workers=1, max_load=0.8, window_s=10.0, max_late_s=1.0)
    for k in range(300):  # 0.3 busy, all finals, 3 streams: 0.1 each
        finals_only.record(0.03, 0.1 * (k + 1), 3, finals_only=3, final=True)
    room = finals_only.room(3, 0.0, 30.0, finals_only=3)
    assert room.projected == pytest.approx(0.3 + 0.4, abs=0.03) and room.fits and room.finals_fit
    assert not finals_only.room(6, 0.0, 30.0, finals_only=6).fits and not finals_only.room(8, 0.0, 30.0, 8).finals_fit
    # a window without any final does not make a finals-only stream free
    idle = Capacity(workers=1, max_load=0.8, window_s=10.0, max_late_s=1.0)
    busy(idle, 0.7, 30.0, streams=1)
    assert not idle.room(1, 0.0, 30.0).finals_fit  # 0.7 + 0.25 * 0.7 > 0.8


def test_a_full_server_set_to_admit_finals_only_takes_the_next_stream_without_partials(make_fake_server, samples):
    """when_full=finals_only: past max_load a stream that fits without partials is admitted as finals-only (its
    ready message says partials false, and it gets finals and no partial), while /readyz reports full so that a
    load balancer still sends the next stream elsewhere. The first stream keeps its partials."""
    server = make_fake_server(delay_s=0.3, workers=1, max_load=0.85, load_window_s=4.0, max_late_s=30.0,
                              when_full="finals_only")
    pcm, rate = read_pcm16(samples["LJ001-0001"]["path"], seconds=9)

    async def scenario():
        first = asyncio.create_task(stream(server.url, pcm, rate, pace=1.0))
        await asyncio.sleep(5.5)  # a window's worth measured: partial updates keep the worker 60 % busy
        ready = await asyncio.to_thread(get, server.http + "/readyz")
        second = await stream(server.url, pcm[: rate * 2 * 3], rate, pace=1.0)
        return await first, ready, second

    first, ready, second = asyncio.run(scenario())
    assert first.of_type("partial") and first.messages[0]["partials"] is True
    assert ready[0] == 503 and json.loads(ready[1])["full"] is True
    assert second.messages[0]["type"] == "ready" and second.messages[0]["partials"] is False
    assert not second.of_type("partial") and second.finals and second.messages[-1]["type"] == "done"


@pytest.mark.parametrize("when_full", ["refuse", "finals_only"])
def test_admission_when_full(when_full):
    """A stream that fits gets partials; one that fits only without them is admitted that way when so configured,
    else refused; one that fits neither way is refused (at_capacity) either way."""
    room = Room(True, 0.5, 0.6, max_load=0.75)
    admission = Admission(8, room=lambda: room, when_full=when_full)
    assert admission.admit("a", None).partials
    room = Room(False, 0.7, 0.9, "busy", 0.75, finals_fit=True)
    if when_full == "finals_only":
        assert not admission.admit("a", None).partials
    else:
        with pytest.raises(Overloaded, match="at capacity"):
            admission.admit("a", None)
    room = Room(False, 0.7, 0.9, "busy", 0.75, finals_fit=False)
    with pytest.raises(Overloaded) as refused:
        admission.admit("a", None)
    assert refused.value.code == "at_capacity" and admission.state()["full"]
