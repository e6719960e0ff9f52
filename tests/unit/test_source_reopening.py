"""When a source that did not open or stopped is tried again: the backoff, and which sources are
read again after they end."""

from __future__ import annotations

import pytest

from ha_voice.voice.sources import Reopening, reopens_after_end


def test_a_source_that_keeps_failing_is_tried_again_after_1_2_4_then_every_8_s() -> None:
    reopening = Reopening()
    assert reopening.due(0.0)  # a source never tried is tried at once
    waits = [reopening.failed(now) for now in (0.0, 1.0, 3.0, 7.0, 15.0, 23.0)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert not reopening.due(30.9)
    assert reopening.due(31.0)


def test_a_source_that_delivered_audio_before_it_stopped_is_tried_again_after_1_s() -> None:
    reopening = Reopening()
    for now in (0.0, 1.0, 3.0):
        reopening.failed(now)
    assert reopening.failed(100.0, delivered=True) == 1.0
    assert reopening.due(101.0)
    assert reopening.failed(101.0) == 2.0  # failing again from there: the backoff grows again


def test_a_thousand_failures_wait_no_longer_than_the_cap() -> None:
    reopening = Reopening()
    for now in range(1000):
        assert reopening.failed(float(now)) <= 8.0


@pytest.mark.parametrize(
    ("entry", "again"),
    [
        ("file:/srv/said.wav", False),  # read again it would say its commands twice
        ("alsa:hw:1,0", True),
        ("pulse:default", True),
        ("rtsp://192.168.123.161:8554/audio", True),
        ("http://127.0.0.1:8000/live.wav", True),
        ("udp://0.0.0.0:9999", True),
    ],
)
def test_only_a_file_is_not_read_again_once_it_ended(entry: str, again: bool) -> None:
    assert reopens_after_end(entry) is again
