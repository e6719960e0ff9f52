"""The pieces of api/uploads.py that need no server: multipart forms, base64 audio, and the
upload slots that bound memory."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from ha_voice.api.problems import ApiError
from ha_voice.api.uploads import (
    MAX_BATCH_UPLOADS,
    MAX_UPLOADS,
    MAX_UPLOADS_PER_CLIENT,
    _Slots,
    base64_limit,
    from_base64,
    is_upload,
    parse_multipart,
)

BOUNDARY = "b0undary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, str | None, str | None, bytes]) -> bytes:
    """A multipart body of (name, filename, content type, data) parts."""
    out = b""
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("field", ["audio", "file"])
def test_the_recording_and_the_fields_of_a_form(field: str) -> None:
    body = form(
        (field, "a.ogg", "audio/ogg", b"OggS\r\n--not-the-end"),
        ("idempotency_key", None, None, b"k-1"),
    )
    upload = parse_multipart(body, FORM, ("idempotency_key",))
    assert upload.data == b"OggS\r\n--not-the-end"
    assert upload.content_type == "audio/ogg"
    assert upload.fields == {"idempotency_key": "k-1"}


def test_a_part_without_a_type_leaves_the_format_to_its_bytes() -> None:
    upload = parse_multipart(form(("audio", "a", None, b"RIFF")), FORM, ())
    assert upload.content_type is None


def refusal(body: bytes, content_type: str = FORM, fields: tuple[str, ...] = ()) -> ApiError:
    with pytest.raises(ApiError) as refused:
        parse_multipart(body, content_type, fields)
    return refused.value


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (form(("idempotency_key", None, None, b"k")), 422, "audio"),
        (form(("audio", "a", None, b"x"), ("file", "b", None, b"y")), 422, "file"),
        (form(("audio", "a", None, b"x"), ("colour", None, None, b"crimson")), 422, None),
        (form(*[("audio", "a", None, b"x")] * 17), 422, None),
        (
            form(("audio", "a", None, b"x"), ("idempotency_key", None, None, b"\xff")),
            422,
            "idempotency_key",
        ),
        (b"--b0undary\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b0undary--\r\n", 422, None),
        (b"no boundary here at all", 400, None),
    ],
    ids=[
        "no-recording",
        "two-recordings",
        "unknown-field",
        "too-many-parts",
        "not-utf8",
        "no-name",
        "garbage",
    ],
)
def test_a_bad_form_is_refused_naming_the_field(
    body: bytes, status: int, field: str | None
) -> None:
    refused = refusal(body, fields=("idempotency_key",))
    assert refused.status == status
    assert refused.details.get("field") == field
    assert "crimson" not in refused.error


def test_a_form_without_a_boundary_is_400() -> None:
    assert refusal(form(("audio", "a", None, b"x")), "multipart/form-data").status == 400


def test_base64_and_data_urls() -> None:
    assert from_base64(base64.b64encode(b"RIFFdata").decode()).data == b"RIFFdata"
    url = from_base64("data:audio/flac;base64," + base64.b64encode(b"fLaC").decode())
    assert (url.data, url.content_type) == (b"fLaC", "audio/flac")
    for bad in ("not base64!", "data:audio/wav,plain", "QUJD\nREVG"):
        with pytest.raises(ApiError) as refused:
            from_base64(bad)
        assert (refused.value.status, refused.value.details["field"]) == (422, "audio")


def test_what_is_an_upload() -> None:
    for media in (
        "audio/wav",
        "audio/L16; rate=16000",
        "video/webm",
        "application/octet-stream",
        FORM,
    ):
        assert is_upload(media)
    for media in (None, "", "application/json", "text/plain", "application/x-www-form-urlencoded"):
        assert not is_upload(media)
    assert base64_limit(3) == 4 + 1024


def test_slots_bound_uploads_in_total_and_per_client() -> None:
    slots = _Slots()
    assert all(slots.take("a") is None for _ in range(MAX_UPLOADS_PER_CLIENT))
    assert "already has" in str(slots.take("a"))
    held: list[Any] = [f"c{i}" for i in range(MAX_UPLOADS - MAX_UPLOADS_PER_CLIENT)]
    assert all(slots.take(client) is None for client in held)
    assert "uploads are being received" in str(slots.take("new"))
    slots.give_back("a")
    assert slots.take("new") is None
    for client in [*held, "a", "new"]:
        slots.give_back(client)
    assert not slots.by_client


def test_transcriptions_hold_at_most_half_the_slots_and_commands_always_find_one() -> None:
    slots = _Slots()
    clients = [f"c{i}" for i in range(MAX_UPLOADS)]
    assert all(slots.take(c, batch=True) is None for c in clients[:MAX_BATCH_UPLOADS])
    refused = slots.take(clients[MAX_BATCH_UPLOADS], batch=True)
    assert "transcriptions" in str(refused)
    assert all(slots.take(c) is None for c in clients[MAX_BATCH_UPLOADS:])  # commands
    assert slots.take("late", batch=False) is not None  # now every slot is held
    slots.give_back(clients[0], batch=True)
    assert slots.take(clients[MAX_BATCH_UPLOADS], batch=True) is None  # a batch slot came back
    assert slots.batch == MAX_BATCH_UPLOADS
