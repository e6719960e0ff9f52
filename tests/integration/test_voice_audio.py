"""Audio in through the HTTP API of a running cluster: every format a client sends is decoded and
recognised, a recognised intent runs as a transcript's would (once per key, from any node), a
dry run runs nothing, silence is "no speech", and every bad upload is a clear 4xx.

Three real `ha-voice run` processes with a simulated Go2: n1 and n2 with real speech (the
packaged multilingual base model in their speech workers), n3 with none, so its audio is
recognised by a member that has it (voice/placement.py). Speech is Dutch from espeak-ng
(tests/speech_corpus.py); "draai naar links" is a phrase the base model hears in every Dutch
voice here.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from ha_voice.client import JetsonVoiceClient
from ha_voice.local_cluster import LocalCluster, SimRobotProcess
from ha_voice.voice.models import packaged_model
from tests.doc_commands import ROOT, block, run
from tests.speech_corpus import encode, have_espeak, say, wav_bytes

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng makes the test speech")

Samples = npt.NDArray[np.float32]
LISTEN = "/api/voice/listen"
TRANSCRIBE = "/v1/audio/transcriptions"
PHRASE = "draai naar links"
NOT_UNDERSTOOD = "Dat heb ik niet verstaan."
VOICE_DOC = ROOT / "docs" / "voice.md"
SPEECH_NODES = ("n1", "n2")
_READY_TIMEOUT_S = 180.0  # two nodes loading and warming a model on a shared 2-core machine


@dataclass
class Rig:
    cluster: LocalCluster
    primary: str
    backup: str  # a backup with speech
    speech: Samples  # PHRASE, 16 kHz

    def url(self, node: str) -> str:
        return self.cluster.nodes[node].url

    def post(self, node: str, path: str = LISTEN, **kw: Any) -> httpx.Response:
        headers = {**self.cluster.auth_headers, **kw.pop("headers", {})}
        return httpx.post(self.url(node) + path, headers=headers, timeout=90, **kw)

    def journal_keys(self, node: str) -> set[str]:
        page = httpx.get(self.url(node) + "/api/journal?limit=1000", timeout=10).json()
        return {entry["key"] for entry in page["entries"]}


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    model = f"--whisper-model={packaged_model('base')}"
    flags = {"n1": ["--priority=200", model], "n2": [model]}  # n3: no speech
    limits = ("--api-rate-per-s=10000", "--api-rate-burst=100000")
    with (
        SimRobotProcess() as sim,
        LocalCluster(3, extra_flags=(f"--robot={sim.spec}", *limits), node_flags=flags) as cluster,
    ):
        cluster.start()
        primary = _speech_primary(cluster)
        _wait_ready(cluster)
        stood = cluster.nodes[primary].post("/api/robot/command", {"command": "stand"})
        assert stood.status_code == 200, stood.text  # a Go2 lying down refuses to walk
        backup = next(n for n in SPEECH_NODES if n != primary)
        yield Rig(cluster, primary, backup, say(PHRASE, "mb-nl2", speed_wpm=140))
        for node in cluster.nodes.values():
            log = node.log_path.read_text(errors="replace")
            assert "bug answering" not in log, log[-3000:]
            assert "Exception in ASGI application" not in log, log[-3000:]


def _speech_primary(cluster: LocalCluster) -> str:
    """A node with speech leads (the first election is a race; a step-down hands it over)."""
    for _ in range(5):
        found = cluster.wait_for_primary(30.0)
        assert found is not None
        if found[0] in SPEECH_NODES:
            return found[0]
        cluster.nodes[found[0]].post("/cluster/step-down", {"target": "n1"})
        cluster.wait_for("n1", lambda view: view.get("role") == "primary", 10.0)
    raise AssertionError("no node with speech leads")


def _wait_ready(cluster: LocalCluster) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    speech: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for name in SPEECH_NODES:
            answer = cluster.nodes[name].get("/health", timeout_s=2.0)
            speech[name] = None if answer is None else answer.json().get("speech")
        if all(s and s["ready"] for s in speech.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"speech not ready after {_READY_TIMEOUT_S} s: {speech}")


# --- uploads, made here -----------------------------------------------------------------------


def wav(samples: Samples) -> bytes:
    return wav_bytes(samples)


# name -> (content type, bytes) for a raw body
RAW: dict[str, Any] = {
    "wav-16k": lambda s: ("audio/wav", wav_bytes(s)),
    "wav-8k": lambda s: ("audio/x-wav", encode("wav", "pcm_s16le", 8000, s)),
    "wav-44k-stereo": lambda s: (
        "audio/wav",
        encode("wav", "pcm_s16le", 44_100, s, layout="stereo"),
    ),
    "flac": lambda s: ("audio/flac", encode("flac", "flac", 16_000, s)),
    "ogg-opus": lambda s: ("audio/ogg", encode("ogg", "libopus", 48_000, s)),
    "mp3": lambda s: ("audio/mpeg", encode("mp3", "libmp3lame", 44_100, s, layout="stereo")),
    "webm-opus": lambda s: ("audio/webm", encode("webm", "libopus", 48_000, s)),
    "l16": lambda s: ("audio/L16;rate=16000;channels=1", (s * 32767).astype(">i2").tobytes()),
    "octet-stream-flac": lambda s: (
        "application/octet-stream",
        encode("flac", "flac", 16_000, s),
    ),
}
FORMAT_NAMES = {
    "wav-16k": "WAV",
    "wav-8k": "WAV",
    "wav-44k-stereo": "WAV",
    "flac": "FLAC",
    "ogg-opus": "Ogg",
    "mp3": "MP3",
    "webm-opus": "WebM",
    "l16": "L16",
    "octet-stream-flac": "FLAC",
}


def assert_heard(body: dict[str, Any], audio_format: str) -> None:
    """An answer to audio: the seed's fields and what was heard, as docs/voice.md says (by the
    node that received it, or the one placement chose: either has speech)."""
    for field in ("status", "recognized", "processed", "response"):
        assert field in body, body
    assert body["intent"] == "turn_left", body
    assert body["stt_node"] in SPEECH_NODES
    assert 0.0 < body["confidence"] <= 1.0
    assert isinstance(body["alternatives"], list)
    assert set(body["timings"]) == {"decode_ms", "stt_ms", "total_ms"}
    assert body["timings"]["total_ms"] >= body["timings"]["stt_ms"]
    assert body["audio"]["format"] == audio_format
    assert 0.5 < body["audio"]["duration_s"] < 5


@pytest.mark.parametrize("name", sorted(RAW))
def test_each_raw_format_is_recognised_in_a_dry_run(rig: Rig, name: str) -> None:
    content_type, data = RAW[name](rig.speech)
    response = rig.post(
        rig.backup, params={"dry_run": "true"}, content=data, headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_heard(body, FORMAT_NAMES[name])
    assert body["dry_run"] is True
    assert body["processed"] is False
    assert body["response"] == "Ik draai naar links."


@pytest.mark.parametrize("field", ["audio", "file"])
def test_a_multipart_upload_in_either_field(rig: Rig, field: str) -> None:
    files = {field: ("clip.ogg", encode("ogg", "libopus", 48_000, rig.speech), "audio/ogg")}
    response = rig.post(rig.backup, params={"dry_run": "1"}, files=files)
    assert response.status_code == 200, response.text
    assert_heard(response.json(), "Ogg")


@pytest.mark.parametrize("prefix", ["", "data:audio/wav;base64,"])
def test_base64_audio_in_json_as_the_seed_sent_it(rig: Rig, prefix: str) -> None:
    audio = prefix + base64.b64encode(wav(rig.speech)).decode()
    response = rig.post(rig.backup, params={"dry_run": "true"}, json={"audio": audio})
    assert response.status_code == 200, response.text
    assert_heard(response.json(), "WAV")


def test_audio_to_the_primary_runs_the_command_once_per_key(rig: Rig) -> None:
    key = f"audio-primary-{time.monotonic_ns()}"
    headers = {"content-type": "audio/wav", "Idempotency-Key": key}
    first = rig.post(rig.primary, content=wav(rig.speech), headers=headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert_heard(body, "WAV")
    assert (body["status"], body["outcome"], body["processed"]) == ("success", "done", True)
    assert (body["key"], body["executed_by"], body["duplicate"]) == (key, rig.primary, False)
    assert body["response"] == "Ik draai naar links."
    again = rig.post(rig.primary, content=wav(rig.speech), headers=headers).json()
    assert (again["key"], again["index"], again["duplicate"]) == (key, body["index"], True)


@pytest.mark.parametrize("node", ["primary", "backup", "n3"])
def test_a_retry_is_answered_from_the_journal_not_heard_again(rig: Rig, node: str) -> None:
    """A retry's recording is not recognised again: even audio that would now be heard as
    nothing (silence) or as another command gets the first answer, never a 409 or a rerun."""
    target = {"primary": rig.primary, "backup": rig.backup, "n3": "n3"}[node]
    key = f"audio-retry-{node}-{time.monotonic_ns()}"
    headers = {"content-type": "audio/wav", "Idempotency-Key": key}
    first = rig.post(target, content=wav(rig.speech), headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["intent"] == "turn_left"
    _wait_journal(rig, target, key)
    for retry in (np.zeros(16_000, np.float32), say("ga liggen", "mb-nl2")):
        again = rig.post(target, content=wav(retry), headers=headers)
        assert again.status_code == 200, again.text
        body = again.json()
        assert (body["key"], body["duplicate"]) == (key, True)
        assert (body["index"], body["intent"]) == (first.json()["index"], "turn_left")
        assert body["response"] == "Ik draai naar links."
        assert "stt_node" not in body  # answered by the journal: nothing was recognised


def _wait_journal(rig: Rig, node: str, key: str) -> None:
    """Until `node`'s replica of the journal holds `key` with its final outcome."""
    deadline = time.monotonic() + 10.0
    while True:
        page = httpx.get(rig.url(node) + "/api/journal?limit=1000", timeout=10).json()
        status = {e["key"]: e["status"] for e in page["entries"]}.get(key)
        if status in ("done", "failed", "stopped", "unknown"):
            return
        assert time.monotonic() < deadline, f"{key} never final in {node}'s journal: {status}"
        time.sleep(0.05)


def test_audio_to_a_backup_is_recognised_there_and_runs_on_the_primary(rig: Rig) -> None:
    key = f"audio-backup-{time.monotonic_ns()}"
    files = {"audio": ("clip.flac", encode("flac", "flac", 16_000, rig.speech), "audio/flac")}
    response = rig.post(rig.backup, files=files, data={"idempotency_key": key})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_heard(body, "FLAC")
    assert (body["outcome"], body["executed_by"], body["key"]) == ("done", rig.primary, key)
    assert response.headers["X-HA-Voice-Forwarded-By"] == rig.backup
    assert key in rig.journal_keys(rig.primary)


def test_a_dry_run_writes_no_journal_entry_and_moves_no_robot(rig: Rig) -> None:
    key = f"audio-dry-{time.monotonic_ns()}"
    headers = {"content-type": "audio/wav", "Idempotency-Key": key}
    response = rig.post(
        rig.primary, params={"dry_run": "true"}, content=wav(rig.speech), headers=headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["dry_run"], body["processed"], body.get("outcome")) == (True, False, None)
    assert key not in rig.journal_keys(rig.primary)
    text = rig.post(
        rig.primary, params={"dry_run": "true"}, json={"text": "sta op", "idempotency_key": key}
    )
    assert (text.json()["intent"], text.json()["processed"]) == ("stand_up", False)
    assert key not in rig.journal_keys(rig.primary)


@pytest.mark.parametrize(
    "upload",
    [
        pytest.param(("audio/wav", b""), id="empty-body"),
        pytest.param(("audio/wav", wav(np.zeros(0, np.float32))), id="wav-without-samples"),
        pytest.param(("audio/wav", wav(np.zeros(32_000, np.float32))), id="two-seconds-of-zeros"),
        pytest.param(
            ("audio/flac", encode("flac", "flac", 16_000, np.zeros(16_000, np.float32))),
            id="flac-silence",
        ),
    ],
)
def test_empty_or_silent_audio_is_no_speech_not_an_error(
    rig: Rig, upload: tuple[str, bytes]
) -> None:
    content_type, data = upload
    response = rig.post(rig.backup, content=data, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["reason"], body["intent"]) == ("rejected", "no_speech", None)
    assert (body["processed"], body["response"], body["recognized"]) == (False, NOT_UNDERSTOOD, "")
    assert body["stt_node"] is None  # no model's time was spent on it


def test_the_text_path_is_unchanged(rig: Rig) -> None:
    response = rig.post(rig.backup, json={"text": "sta op"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["intent"], body["outcome"]) == ("success", "stand_up", "done")
    assert "stt_node" not in body
    rejected = rig.post(rig.backup, json={"text": "vlieg naar de maan"}).json()
    assert (rejected["status"], rejected["response"]) == ("rejected", NOT_UNDERSTOOD)


# --- refusals ---------------------------------------------------------------------------------


def refused(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert len(response.content) < 2048
    body = response.json()
    assert body["status"] == "error"
    assert "SECRET" not in response.text
    return body  # type: ignore[no-any-return]


def test_a_type_we_do_not_decode_is_415_naming_what_is_accepted(rig: Rig) -> None:
    for content_type in ("audio/aac", "image/png", "audio/L16"):
        body = refused(
            rig.post(rig.backup, content=b"SECRET" * 100, headers={"content-type": content_type}),
            415,
        )
        assert any(a.startswith("audio/flac") for a in body["accepted"]), body


@pytest.mark.parametrize(
    "content_type", ["audio/wav", "audio/ogg", "audio/flac", "audio/webm", "audio/mpeg"]
)
def test_garbage_under_an_audio_type_is_422_without_echoing_it(rig: Rig, content_type: str) -> None:
    body = refused(
        rig.post(rig.backup, content=b"SECRET-" * 500, headers={"content-type": content_type}), 422
    )
    assert "not a valid" in body["error"]


def test_a_truncated_header_is_422(rig: Rig) -> None:
    data = encode("ogg", "libopus", 48_000, rig.speech)[:30]
    refused(rig.post(rig.backup, content=data, headers={"content-type": "audio/ogg"}), 422)


def test_over_the_byte_limit_is_413_declared_or_streamed(rig: Rig) -> None:
    declared = rig.post(
        rig.backup, content=b"\0" * (8 * 1024 * 1024 + 1), headers={"content-type": "audio/wav"}
    )
    assert refused(declared, 413)["limit_bytes"] == 8 * 1024 * 1024

    def chunks() -> Iterator[bytes]:
        yield wav(rig.speech)
        for _ in range(9):
            yield b"\0" * (1024 * 1024)

    streamed = rig.post(rig.backup, content=chunks(), headers={"content-type": "audio/wav"})
    assert refused(streamed, 413)["limit_bytes"] == 8 * 1024 * 1024


def test_over_the_seconds_limit_is_413_naming_the_key(rig: Rig) -> None:
    long = wav(np.zeros(31 * 16_000, np.float32))  # silence: decoding alone decides
    body = refused(rig.post(rig.backup, content=long, headers={"content-type": "audio/wav"}), 413)
    assert "listen_max_audio_s" in body["error"]


def test_a_tiny_flac_of_an_hour_stops_at_the_seconds_limit(rig: Rig) -> None:
    hour = encode("flac", "flac", 8000, np.zeros(8000 * 3600, np.float32))
    assert len(hour) < 1_000_000
    body = refused(rig.post(rig.backup, content=hour, headers={"content-type": "audio/flac"}), 413)
    assert "30 s" in body["error"]


@pytest.mark.parametrize(
    ("files", "data", "field"),
    [
        ({}, {"idempotency_key": "k1"}, "audio"),
        ({"audio": ("a.wav", b"x", "audio/wav"), "file": ("b.wav", b"x", "audio/wav")}, {}, "file"),
        ({"audio": ("a.wav", b"x", "audio/wav")}, {"language": "nl"}, None),
    ],
    ids=["no-file", "two-files", "unknown-field"],
)
def test_a_form_without_one_recording_is_422(
    rig: Rig, files: dict[str, Any], data: dict[str, str], field: str | None
) -> None:
    if not files:  # httpx sends a form only with a file; a text field alone, as a form
        files = {"idempotency_key": (None, "k1")}
        data = {}
    body = refused(rig.post(rig.backup, files=files, data=data), 422)
    assert body.get("field") == field


def test_speech_work_needs_a_token_even_when_it_changes_nothing(rig: Rig) -> None:
    """A dry run and a transcription run nothing, but they take a model's time: no token, 401
    (before the upload is read or decoded)."""
    url = rig.url(rig.backup)
    audio = {"content": wav(rig.speech), "headers": {"content-type": "audio/wav"}}
    files = {"file": ("clip.wav", wav(rig.speech), "audio/wav")}
    for response in (
        httpx.post(url + LISTEN, **audio),
        httpx.post(url + LISTEN, params={"dry_run": "true"}, **audio),
        httpx.post(url + TRANSCRIBE, files=files, data={"model": "whisper-1"}),
        httpx.post(url + TRANSCRIBE, files=files, headers={"Authorization": "Bearer wrong"}),
    ):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_audio_to_a_node_without_speech_is_recognised_by_one_with_it(rig: Rig) -> None:
    response = rig.post(
        "n3",
        params={"dry_run": "true"},
        content=wav(rig.speech),
        headers={"content-type": "audio/wav"},
    )
    assert response.status_code == 200, response.text
    assert_heard(response.json(), "WAV")


# --- /v1/audio/transcriptions -----------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["json", "text", "verbose_json"])
def test_transcriptions_as_openai_answers_them(rig: Rig, response_format: str) -> None:
    files = {"file": ("clip.mp3", encode("mp3", "libmp3lame", 44_100, rig.speech), "audio/mpeg")}
    fields = {"model": "whisper-1", "language": "nl", "response_format": response_format}
    response = rig.post(rig.backup, TRANSCRIBE, files=files, data=fields)
    assert response.status_code == 200, response.text
    if response_format == "text":
        assert response.headers["content-type"].startswith("text/plain")
        assert "links" in response.text.lower()
        return
    body = response.json()
    assert "links" in body["text"].lower()
    if response_format == "json":
        assert set(body) == {"text"}
    else:
        assert body["task"] == "transcribe"
        assert body["language"] == "nl"
        assert 0.5 < body["duration"] < 5
        assert body["segments"][0]["text"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": "whisper-1", "response_format": "srt"}, "response_format"),
        ({"response_format": "json"}, "model"),
        ({"model": "whisper-1", "language": "Dutch!"}, "language"),
        ({"model": "whisper-1", "temperature": "hot"}, "temperature"),
    ],
)
def test_transcription_parameters_are_400_naming_them(
    rig: Rig, fields: dict[str, str], field: str
) -> None:
    files = {"file": ("clip.wav", wav(rig.speech), "audio/wav")}
    body = refused(rig.post(rig.backup, TRANSCRIBE, files=files, data=fields), 400)
    assert body["field"] == field


def test_transcriptions_take_a_form_only(rig: Rig) -> None:
    response = rig.post(
        rig.backup, TRANSCRIBE, content=wav(rig.speech), headers={"content-type": "audio/wav"}
    )
    assert refused(response, 415)["accepted"] == ["multipart/form-data"]


def test_silence_transcribes_to_nothing(rig: Rig) -> None:
    files = {"file": ("quiet.wav", wav(np.zeros(16_000, np.float32)), "audio/wav")}
    response = rig.post(rig.backup, TRANSCRIBE, files=files, data={"model": "whisper-1"})
    assert response.status_code == 200, response.text
    assert response.json() == {"text": ""}


def test_the_commands_of_docs_voice_md_work_as_written(rig: Rig, tmp_path: Path) -> None:
    script = block("listen-audio", VOICE_DOC) + block("transcribe-audio", VOICE_DOC)
    replacements = {
        "/etc/ha-voice/api.tokens": str(rig.cluster.token_file),
        "http://jetson1:8888": rig.url(rig.backup),
    }
    out = run(script, tmp_path, replacements).stdout
    assert '"dry_run":true' in out
    assert '"intent":"turn_left"' in out
    assert "dry run: turn_left would run" in out
    assert "links" in out.splitlines()[-1].lower()


def test_ha_voice_listen_prints_what_was_heard_and_exits_as_send(rig: Rig, tmp_path: Path) -> None:
    speech, quiet, broken = tmp_path / "draai.flac", tmp_path / "quiet.wav", tmp_path / "x.ogg"
    speech.write_bytes(encode("flac", "flac", 16_000, rig.speech))
    quiet.write_bytes(wav(np.zeros(16_000, np.float32)))
    broken.write_bytes(b"SECRET" * 100)
    token = ("--token-file", str(rig.cluster.token_file))

    def listen(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ha_voice", "listen", "--url", rig.url(rig.backup)]
        return subprocess.run(
            [*command, *token, *argv], capture_output=True, text=True, timeout=60, check=False
        )

    done = listen(str(speech))
    assert done.returncode == 0, done.stderr
    heard, outcome = done.stdout.splitlines()
    assert heard.startswith("heard 'draai naar links")
    assert any(f" on {node} " in heard for node in SPEECH_NODES)
    assert outcome.startswith("done: turn_left")
    assert listen("--dry-run", str(speech)).stdout.splitlines()[1].startswith("dry run: turn_left")
    not_heard = listen(str(quiet))
    assert (not_heard.returncode, not_heard.stdout.splitlines()[1]) == (
        5,
        "not understood: '' (no_speech)",
    )
    refused_upload = listen(str(broken))
    assert refused_upload.returncode == 9
    assert "HTTP 422" in refused_upload.stderr
    assert "SECRET" not in refused_upload.stderr


def test_a_client_holds_at_most_two_uploads_at_once(rig: Rig) -> None:
    """Uploads hold a slot while they are read and decoded (at most 2 per client, 8 in all):
    with two bodies still arriving, a third upload from the same address is 503 at once,
    before its body is read; once they are gone, uploads are taken again."""
    node = rig.cluster.nodes[rig.backup]
    head = (
        f"POST {LISTEN} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {rig.cluster.token}\r\n"
        "Content-Type: audio/wav\r\nContent-Length: 100000\r\n\r\nRIFF"
    ).encode()
    garbage = {"content": b"SECRET" * 10, "headers": {"content-type": "audio/wav"}}
    held = [socket.create_connection((node.host, node.api_port), timeout=10) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(head)  # and never the rest
        answer = _until(lambda: rig.post(rig.backup, **garbage), lambda r: r.status_code == 503)
        body = refused(answer, 503)
        assert "already has 2 uploads" in body["error"]
        assert answer.headers["Retry-After"] == "1"
    finally:
        for sock in held:
            sock.close()
    answer = _until(lambda: rig.post(rig.backup, **garbage), lambda r: r.status_code != 503)
    refused(answer, 422)


def _until(
    send: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """`send()` again until `done` says so (the server takes a moment to read a request's
    head), at most 10 s."""
    deadline = time.monotonic() + 10.0
    while True:
        answer = send()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_the_seed_client_sends_a_recording(rig: Rig) -> None:
    client = JetsonVoiceClient(rig.url(rig.backup), token=rig.cluster.token, timeout=60.0)
    try:
        answer = client.send_audio(encode("ogg", "libopus", 48_000, rig.speech))
        quiet = client.send_audio(wav(np.zeros(16_000, np.float32)), "audio/wav")
        broken = client.send_audio(b"SECRET" * 10, "audio/flac")
    finally:
        client.close()
    assert (answer["status"], answer["intent"], answer["outcome"]) == (
        "success",
        "turn_left",
        "done",
    )
    assert (quiet["status"], quiet["reason"]) == ("rejected", "no_speech")
    assert broken["status"] == "error"
    assert "SECRET" not in str(broken)
