"""Who may change things: tokens, trusted networks, the forward seal, without a server."""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.requests import Request

from ha_voice import clock
from ha_voice.api import auth as auth_module
from ha_voice.api.auth import (
    FORWARD_SEAL,
    FORWARDED_BY,
    Authenticator,
    Principal,
    Unauthorized,
    verified_forwarder,
)
from ha_voice.api.forward_seal import (
    Claim,
    ForwardSeal,
    Recipient,
    body_digest,
    derive_forward_key,
)
from ha_voice.cluster.protocol import derive_key
from ha_voice.cluster.view import PeerInfo
from ha_voice.config import Config
from ha_voice.errors import ConfigError, RemoteError
from ha_voice.tokens import MIN_TOKEN_CHARS

ALICE = "alice-token-" + "a" * MIN_TOKEN_CHARS
BOB = "bob-token-" + "b" * MIN_TOKEN_CHARS
KEY = b"k" * 32
NEXT_KEY = b"n" * 32
MEMBERS = ("n1", "n2", "n3", "w")
V3 = "v3;i=" + "0" * 16  # a seal's version and a boot id
J = "0" * 16  # a recipient's boot id


def tokens_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "api.tokens"
    path.write_text(text)
    path.chmod(0o600)
    return path


# Each member's boot id, as every other member admitted it.
BOOTS = {node: 0x1000 + i for i, node in enumerate(MEMBERS)}


class Member:
    """A member's ForwardSeal, sealing in its boot for its peers' boots (their clocks are this
    process's, unless `offset_s`) and opening what its peers' boots seal."""

    def __init__(self, node: str, keys: tuple[bytes, ...], **options: Any) -> None:
        self.node = node
        self.forward_seal = ForwardSeal(
            cluster="c", keys=keys, node_id=node, members=MEMBERS, **options
        )

    def seal(self, *args: Any, to_boot: int | None = None, offset_s: float = 0.0) -> str:
        *head, recipient = args
        to = Recipient(recipient, BOOTS[recipient] if to_boot is None else to_boot, offset_s)
        return self.forward_seal.seal(*head, to, boot=BOOTS[self.node])

    def open(self, node: str, *args: Any, admitted: int | None = -1) -> Claim:
        admitted = BOOTS.get(node) if admitted == -1 else admitted
        return self.forward_seal.open(node, *args, boot=BOOTS[self.node], admitted=admitted)


def seal(node: str = "n2", keys: tuple[bytes, ...] = (KEY,), **options: Any) -> Member:
    return Member(node, keys, **options)


def authenticator(
    tmp_path: Path, tokens: str | None = f"alice:{ALICE}\n{BOB}\n", networks: tuple[str, ...] = ()
) -> Authenticator:
    key_file = tmp_path / "cluster.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    config = Config(
        node_id="n1",
        cluster="c",
        peers=["n2", "n3"],
        witness="w",
        cluster_key_file=key_file,
        api_token_file=None if tokens is None else tokens_file(tmp_path, tokens),
        trusted_networks=list(networks),
    )
    return Authenticator.from_config(config)


def refused(auth: Authenticator, header: str | None, address: str = "192.0.2.7") -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        auth.check(header, address, None)
    return caught.value


# --- tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_a_configured_token_names_its_sender_whatever_the_scheme_casing(
    tmp_path: Path, scheme: str
) -> None:
    auth = authenticator(tmp_path)
    assert auth.check(f"{scheme} {ALICE}", "192.0.2.7", None) == Principal(
        "token", "alice", "192.0.2.7"
    )
    assert (
        auth.check(f"  {scheme}   {BOB}  ", "192.0.2.7", "n2").source == "token-2@192.0.2.7 via n2"
    )


@pytest.mark.parametrize(
    "token",
    [
        ALICE[:-1],  # one character short
        ALICE + "a",  # one too many
        ALICE.upper(),  # tokens are case-sensitive
        "x",
        "",
        "a" * 10_000,
        ALICE + " " + BOB,
    ],
)
def test_any_other_token_is_refused_without_being_echoed(tmp_path: Path, token: str) -> None:
    refusal = refused(authenticator(tmp_path), f"Bearer {token}")
    assert refusal.reason == "invalid_token"
    assert refusal.challenge == 'Bearer realm="ha-voice", error="invalid_token"'
    assert "api_token_file" in refusal.message
    assert ALICE not in refusal.message
    assert (token or "\0") not in refusal.message


@pytest.mark.parametrize("header", ["Basic YWxpY2U6eA==", "Token " + ALICE, ALICE])
def test_only_the_bearer_scheme_is_accepted(tmp_path: Path, header: str) -> None:
    refusal = refused(authenticator(tmp_path), header)
    assert refusal.reason == "wrong_scheme"
    assert refusal.challenge == 'Bearer realm="ha-voice"'
    assert ALICE not in refusal.message


def test_no_credentials_says_where_tokens_come_from(tmp_path: Path) -> None:
    refusal = refused(authenticator(tmp_path), None)
    assert refusal.reason == "no_credentials"
    assert "Authorization: Bearer TOKEN" in refusal.message
    assert "api_token_file" in refusal.message
    assert "HA_VOICE_TOKEN" in refusal.message


def test_every_token_is_compared_without_an_early_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "".join(f"t{i}:{'t' * MIN_TOKEN_CHARS}{i}\n" for i in range(5))
    auth = authenticator(tmp_path, lines)
    calls: list[int] = []
    compare = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(len(a))
        return compare(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    first, last = f"{'t' * MIN_TOKEN_CHARS}0", f"{'t' * MIN_TOKEN_CHARS}4"
    for token, known in ((first, True), (last, True), ("short", False), ("x" * 999, False)):
        calls.clear()
        if known:
            auth.check(f"Bearer {token}", "192.0.2.7", None)
        else:
            refused(auth, f"Bearer {token}")
        assert calls == [32] * 5  # digests: the same length and count whatever was sent


# --- trusted networks and the secure default -----------------------------------------------


def test_a_trusted_network_needs_no_token_but_a_wrong_token_is_still_wrong(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, networks=("10.9.0.0/16", "fd00::/8"))
    assert auth.check(None, "10.9.3.4", None) == Principal("network", "10.9.0.0/16", "10.9.3.4")
    assert auth.check(None, "::ffff:10.9.3.4", "n2").source == "::ffff:10.9.3.4 via n2"
    assert auth.check(None, "fd00::1", None).name == "fd00::/8"
    assert auth.check(f"Bearer {ALICE}", "10.9.3.4", None).name == "alice"
    assert refused(auth, "Bearer " + "z" * 30, "10.9.3.4").reason == "invalid_token"
    outside = refused(auth, None, "10.10.0.1")
    assert outside.reason == "no_credentials"
    assert "10.10.0.1 is not in trusted_networks" in outside.message
    assert refused(auth, None, "?").reason == "no_credentials"


def test_networks_without_tokens_know_no_token(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, None, ("127.0.0.0/8",))
    assert auth.check(None, "127.0.0.1", None).kind == "network"
    refusal = refused(auth, f"Bearer {ALICE}", "127.0.0.1")
    assert "has no api_token_file" in refusal.message


def test_with_neither_tokens_nor_networks_everything_is_refused_saying_how_to_configure(
    tmp_path: Path,
) -> None:
    auth = authenticator(tmp_path, None)
    refusal = refused(auth, None, "127.0.0.1")
    assert refusal.reason == "not_configured"
    assert "no api_token_file and no trusted_networks" in refusal.message
    assert "ha-voice keygen" in refusal.message
    assert refused(auth, f"Bearer {ALICE}").reason == "invalid_token"


# --- the token file changes while the node runs --------------------------------------------


def changed(path: Path, text: str | None, mode: int = 0o600) -> None:
    """Rewrite (or, with None, delete) the token file, its mtime surely new."""
    if text is None:
        path.unlink()
        return
    path.write_text(text)
    path.chmod(mode)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1))  # a new mtime within a clock tick


def test_a_changed_token_file_is_read_again(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, f"alice:{ALICE}\n")
    changed(tmp_path / "api.tokens", f"bob:{BOB}\n")  # alice revoked, bob added
    assert auth.check(f"Bearer {BOB}", "192.0.2.7", None).name == "bob"
    assert refused(auth, f"Bearer {ALICE}").reason == "invalid_token"


# What an operator revoking alice might leave: each refuses every token, bob's too.
BROKEN = {
    "copied with mode 0644": (f"bob:{BOB}\n", 0o644, "mode 0644: group or others may read"),
    "group-writable": (f"bob:{BOB}\n", 0o620, "mode 0620"),
    "deleted": (None, 0o600, "no such file"),
    "emptied": ("# nobody\n", 0o600, "holds no token"),
    "a short token": (f"bob:{BOB}\ncarol:short\n", 0o600, "line 2: the token has 5 characters"),
    "not ASCII": ("bob:tökén\n", 0o600, "not ASCII text"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_token_file_that_becomes_unusable_refuses_every_token_until_fixed(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    text, mode, why = BROKEN[case]
    auth = authenticator(tmp_path, f"alice:{ALICE}\nbob:{BOB}\n")
    path = tmp_path / "api.tokens"
    changed(path, text, mode)
    for token in (ALICE, BOB, BOB):
        refusal = refused(auth, f"Bearer {token}")
        assert refusal.reason == "token_file_refused"
        assert f"n1 accepts no token while its api_token_file is refused ({why}" in refusal.message
        assert ALICE not in refusal.message
        assert BOB not in refusal.message
        assert refusal.challenge == 'Bearer realm="ha-voice", error="invalid_token"'
    assert auth.token_file_problem() is not None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1  # once per change, not once per request
    assert "is refused: every token gets 401 until the file is fixed" in errors[0].getMessage()
    assert "fix:" in errors[0].getMessage()
    assert ALICE not in caplog.text
    assert BOB not in caplog.text
    changed(path, f"bob:{BOB}\n")  # fixed: alice revoked, as meant
    assert auth.check(f"Bearer {BOB}", "192.0.2.7", None).name == "bob"
    assert refused(auth, f"Bearer {ALICE}").reason == "invalid_token"
    assert auth.token_file_problem() is None
    assert "re-read (accepted again): 1 token(s)" in caplog.text


def test_each_change_to_a_still_broken_file_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = authenticator(tmp_path, f"alice:{ALICE}\n")
    path = tmp_path / "api.tokens"
    for text, mode in ((f"alice:{ALICE}\n", 0o644), ("x:short\n", 0o600), (None, 0o600)):
        changed(path, text, mode)
        refused(auth, f"Bearer {ALICE}")
        refused(auth, f"Bearer {ALICE}")
    assert [r.levelname for r in caplog.records].count("ERROR") == 3


def test_a_refused_token_file_still_lets_trusted_networks_in_without_a_token(
    tmp_path: Path,
) -> None:
    auth = authenticator(tmp_path, f"alice:{ALICE}\n", networks=("10.9.0.0/16",))
    changed(tmp_path / "api.tokens", None)
    assert auth.check(None, "10.9.3.4", None).kind == "network"
    assert refused(auth, f"Bearer {ALICE}", "10.9.3.4").reason == "token_file_refused"


def test_the_token_file_gauge_follows_the_file_without_a_request(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    key_file = tmp_path / "cluster.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    config = Config(
        node_id="n1",
        cluster_key_file=key_file,
        api_token_file=tokens_file(tmp_path, f"alice:{ALICE}\n"),
    )
    Authenticator.from_config(config, registry)
    path = tmp_path / "api.tokens"
    assert registry.get_sample_value("ha_voice_api_token_file_ok") == 1.0
    changed(path, f"alice:{ALICE}\n", 0o644)
    assert registry.get_sample_value("ha_voice_api_token_file_ok") == 0.0
    changed(path, f"alice:{ALICE}\n")
    assert registry.get_sample_value("ha_voice_api_token_file_ok") == 1.0


def test_without_a_token_file_there_is_no_token_file_gauge(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    key_file = tmp_path / "cluster.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    Authenticator.from_config(Config(node_id="n1", cluster_key_file=key_file), registry)
    assert registry.get_sample_value("ha_voice_api_token_file_ok") is None


def test_a_bad_token_file_refuses_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 1: the token has 5 characters"):
        authenticator(tmp_path, "x:short\n")


# --- the forward seal ----------------------------------------------------------------------


def test_a_seal_opens_once_with_what_it_carries() -> None:
    sealed = seal("n2").seal("POST", "/api/robot/command", "10.9.3.4", "token:alice", b"{}", "n1")
    claim = seal("n1").open("n2", sealed, "POST", "/api/robot/command")
    assert (claim.node, claim.address, claim.principal) == ("n2", "10.9.3.4", "token:alice")
    assert claim.body_sha256 == body_digest(b"{}")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"node": "n3"}, "bad_mac"),  # another member's name on n2's seal
        ({"method": "PUT"}, "bad_mac"),
        ({"path": "/cluster/step-down"}, "bad_mac"),
        ({"node": "stranger"}, "not_member"),
        ({"node": "n1"}, "not_member"),  # itself
        ({"seal": None}, "unsigned"),
        ({"seal": "v3;t=1"}, "malformed"),
        ({"seal": "v1;t=1;n=x;a=1.2.3.4;p=network;b=x;m=x"}, "bad_version"),  # no recipient
        ({"seal": "v2;t=1;n=x;r=n1;a=1.2.3.4;p=network;b=x;m=x"}, "bad_version"),  # wall time
        ({"seal": "v3;t=1;n=x;r=n1;a=1.2.3.4;p=network;b=x;m=x"}, "malformed"),  # no boot
        ({"seal": f"{V3};t=1;n=x;r=n1;j={J};a=1.2.3.4;p=network;b=x;m=x"}, "bad_mac"),  # shaped
        ({"seal": f"v3;i={'0' * 15}g;t=1;n=x;r=n1;j={J};a=1.2.3.4;p=network;b=x;m=x"}, "malformed"),
        ({"seal": f"{V3};t=1;n=x;r=n1;j={'0' * 15};a=1.2.3.4;p=network;b=x;m=x"}, "malformed"),
        ({"seal": f"{V3};t=+1;n=x;r=n1;j={J};a=1.2.3.4;p=network;b=x;m=x"}, "malformed"),
        (
            {"seal": f"{V3};t={'9' * 16};n=x;r=n1;j={J};a=1.2.3.4;p=network;b=x;m=x"},
            "malformed",
        ),
        ({"seal": f"{V3};t=1;n=x;r=n1;j={J};a=1.2.3.4;p=root;b=x;m=x"}, "malformed"),
        ({"seal": f"{V3};t=1;n=x;r=n1;j={J};a=<script>;p=network;b=x;m=x"}, "malformed"),
        ({"seal": f"{V3};t=1;n=x;r=n.1;j={J};a=1.2.3.4;p=network;b=x;m=x"}, "malformed"),
        ({"seal": "v3;" + "t=1;" * 200}, "malformed"),
        ({"tamper": ("i=0000000000001001", "i=0000000000001002")}, "bad_mac"),  # reboot
        ({"tamper": ("r=n1", "r=n3")}, "bad_mac"),  # readdressed
        ({"tamper": ("a=10.9.3.4", "a=10.9.3.5")}, "bad_mac"),
        ({"tamper": ("p=token:alice", "p=network")}, "bad_mac"),
        ({"tamper": ("p=token:alice", "p=token:bob")}, "bad_mac"),
    ],
)
def test_a_seal_that_does_not_match_is_not_believed(change: dict[str, Any], reason: str) -> None:
    sealed = seal("n2").seal("POST", "/api/robot/command", "10.9.3.4", "token:alice", b"{}", "n1")
    if "tamper" in change:
        sealed = sealed.replace(*change["tamper"])
    args = {"node": "n2", "seal": sealed, "method": "POST", "path": "/api/robot/command"}
    args.update({k: v for k, v in change.items() if k != "tamper"})
    with pytest.raises(RemoteError) as caught:
        seal("n1").open(args["node"], args["seal"], args["method"], args["path"])
    assert caught.value.reason == reason


def test_a_seal_opens_only_at_the_member_it_is_addressed_to() -> None:
    sealed = seal("n2").seal("POST", "/p", "1.2.3.4", "network", b"", "n1")
    for elsewhere in ("n3", "w"):
        with pytest.raises(RemoteError) as caught:
            seal(elsewhere).open("n2", sealed, "POST", "/p")
        assert caught.value.reason == "wrong_recipient"
        assert "'n2' sealed it for 'n1', not for this node" in str(caught.value)
    assert seal("n1").open("n2", sealed, "POST", "/p").node == "n2"  # not used up elsewhere


def test_a_seal_made_with_another_key_or_the_datagram_key_is_not_believed() -> None:
    other = seal("n2", (b"o" * 32,)).seal("POST", "/p", "1.2.3.4", "network", b"", "n1")
    with pytest.raises(RemoteError, match="bad_mac"):
        seal("n1").open("n2", other, "POST", "/p")
    assert derive_forward_key(KEY, "c") != derive_key(KEY, "c")


def test_a_replayed_seal_is_refused() -> None:
    opener = seal("n1")
    sealed = seal("n2").seal("POST", "/p", "1.2.3.4", "network", b"", "n1")
    opener.open("n2", sealed, "POST", "/p")
    with pytest.raises(RemoteError, match="replay"):
        opener.open("n2", sealed, "POST", "/p")


@pytest.mark.parametrize("skew_s", [-365 * 86_400.0, -3600.0, 86_400.0])
def test_a_seal_whose_sender_wall_clock_is_far_off_opens(
    monkeypatch: pytest.MonkeyPatch, skew_s: float
) -> None:
    """A board without RTC battery before NTP: its wall clock a year (or an hour) off."""
    now_us = clock.wall_clock_us()
    monkeypatch.setattr(clock, "wall_clock_us", lambda: now_us + int(skew_s * 1e6))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)
    monkeypatch.setattr(time, "time_ns", lambda: int((real() + skew_s) * 1e9))
    sealed = seal("n2").seal("POST", "/p", "1.2.3.4", "network", b"", "n1")
    monkeypatch.undo()
    assert seal("n1").open("n2", sealed, "POST", "/p").node == "n2"


class Clock:
    """clock.monotonic, set by hand: one process plays both machines."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now_s: float) -> None:
        self.now_s = now_s
        monkeypatch.setattr(clock, "monotonic", lambda: self.now_s)


def test_a_sender_whose_monotonic_clock_is_far_from_the_recipients_seals_on_the_recipients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """faketime -f -365d shifts CLOCK_MONOTONIC too (below zero): the sender's heartbeat-learned
    offset puts its seal on the recipient's clock."""
    sender, opener = seal("n2"), seal("n1")
    at = Clock(monkeypatch, -365 * 86_400.0)
    sealed = sender.seal("POST", "/p", "1.2.3.4", "network", b"", "n1", offset_s=365 * 86_400.0)
    unreckoned = sender.seal("POST", "/p", "1.2.3.4", "network", b"", "n1")  # no offset known
    at.now_s = 2.0  # the recipient's clock
    assert opener.open("n2", sealed, "POST", "/p").node == "n2"
    with pytest.raises(RemoteError, match="stale"):
        opener.open("n2", unreckoned, "POST", "/p")


@pytest.mark.parametrize(("later_s", "fresh"), [(-119.0, True), (119.0, True), (121.0, False)])
def test_a_seal_further_than_the_window_from_the_recipients_clock_is_stale(
    monkeypatch: pytest.MonkeyPatch, later_s: float, fresh: bool
) -> None:
    at = Clock(monkeypatch, 1000.0)
    sealed = seal("n2").seal("POST", "/p", "1.2.3.4", "network", b"", "n1")
    at.now_s += later_s
    if fresh:
        assert seal("n1", window_s=120.0).open("n2", sealed, "POST", "/p").node == "n2"
        return
    with pytest.raises(RemoteError) as caught:
        seal("n1", window_s=120.0).open("n2", sealed, "POST", "/p")
    assert caught.value.reason == "stale"
    assert "sealed 121 s from now" in str(caught.value)


def test_a_replay_is_refused_within_the_window_and_stale_past_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = Clock(monkeypatch, 1000.0)
    opener = seal("n1")
    sealed = seal("n2").seal("POST", "/p", "1.2.3.4", "network", b"", "n1")
    opener.open("n2", sealed, "POST", "/p")
    for later_s, reason in ((0.0, "replay"), (119.0, "replay"), (121.0, "stale")):
        at.now_s = 1000.0 + later_s
        with pytest.raises(RemoteError) as caught:
            opener.open("n2", sealed, "POST", "/p")
        assert caught.value.reason == reason


def test_a_seal_of_a_boot_not_admitted_is_refused() -> None:
    sealed = seal("n2").seal("POST", "/p", "1.2.3.4", "network", b"", "n1")
    for admitted in (None, BOOTS["n2"] + 1):
        with pytest.raises(RemoteError) as caught:
            seal("n1").open("n2", sealed, "POST", "/p", admitted=admitted)
        assert caught.value.reason == "unknown_boot"
    assert seal("n1").open("n2", sealed, "POST", "/p").node == "n2"


def test_a_seal_for_a_previous_boot_of_the_recipient_is_refused() -> None:
    """A restarted primary remembers no MAC, and its host's monotonic clock may have restarted
    too: seals made for its previous boot are worth nothing to it."""
    sealed = seal("n2").seal("POST", "/p", "1.2.3.4", "network", b"", "n1", to_boot=0xDEAD)
    with pytest.raises(RemoteError) as caught:
        seal("n1").open("n2", sealed, "POST", "/p")
    assert caught.value.reason == "wrong_recipient"
    assert "sealed it for boot 000000000000dead, not this one" in str(caught.value)


def test_memory_is_bounded_and_a_forgotten_seal_is_stale_not_believed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = Clock(monkeypatch, 100.0)
    sender, opener = seal("n2"), seal("n1", max_remembered=10)
    seals = []
    for i in range(50):
        at.now_s = 100.0 + i / 1000
        seals.append(sender.seal("POST", "/p", "1.2.3.4", "network", b"", "n1"))
    for sealed in seals:
        opener.open("n2", sealed, "POST", "/p")
        assert opener.forward_seal.remembered() <= 10
    for sealed in seals[:40]:  # forgotten: refused all the same
        with pytest.raises(RemoteError, match="stale"):
            opener.open("n2", sealed, "POST", "/p")
    for sealed in seals[40:]:
        with pytest.raises(RemoteError, match="replay"):
            opener.open("n2", sealed, "POST", "/p")
    assert opener.forward_seal.remembered() <= 10


def test_memory_is_bounded_by_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    at = Clock(monkeypatch, 0.0)
    sender, opener = seal("n2"), seal("n1", window_s=1.0)
    for i in range(100):
        at.now_s = i * 0.1
        opener.open("n2", sender.seal("POST", "/p", "1.2.3.4", "network", b"", "n1"), "POST", "/p")
    assert opener.forward_seal.remembered() <= 11  # one second's worth


def test_during_a_rotation_either_key_opens_and_the_first_seals() -> None:
    old_only, both, new_first = (
        seal("n2", (KEY,)),
        seal("n1", (KEY, NEXT_KEY)),
        seal("n3", (NEXT_KEY, KEY)),
    )
    both.open("n2", old_only.seal("POST", "/p", "1.2.3.4", "network", b"", "n1"), "POST", "/p")
    both.open("n3", new_first.seal("POST", "/p", "1.2.3.4", "network", b"", "n1"), "POST", "/p")
    with pytest.raises(RemoteError, match="bad_mac"):
        seal("n1", (KEY,)).open(
            "n3", new_first.seal("POST", "/p", "1.2.3.4", "network", b"", "n1"), "POST", "/p"
        )


# --- verified_forwarder: what the rate limiter asks ----------------------------------------


def request(app: FastAPI, headers: dict[str, str], path: str = "/api/robot/command") -> Request:
    scope = {
        "type": "http",
        "app": app,
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("192.0.2.9", 40000),
    }
    return Request(scope)


def test_verified_forwarder_names_a_sealed_member_once_and_ignores_a_bare_marker(
    tmp_path: Path,
) -> None:
    app = FastAPI()
    auth = authenticator(tmp_path)
    app.state.ha_voice_auth = auth
    # The core's published view, as the HTTP loop reads it: n2's admitted boot.
    view = SimpleNamespace(boot_id=BOOTS["n1"], peers={"n2": PeerInfo("n2", boot=BOOTS["n2"])})
    app.state.ctx = SimpleNamespace(node=SimpleNamespace(view=view))
    sealed = seal("n2").seal("POST", "/api/robot/command", "10.9.3.4", "network", b"", "n1")
    genuine = request(app, {FORWARDED_BY: "n2", FORWARD_SEAL: sealed})
    assert verified_forwarder(genuine) == "n2"
    assert verified_forwarder(genuine) == "n2"  # asked twice, checked once: no false replay
    assert verified_forwarder(request(app, {FORWARDED_BY: "n2", FORWARD_SEAL: sealed})) is None
    assert verified_forwarder(request(app, {FORWARDED_BY: "n2"})) is None
    assert verified_forwarder(request(app, {})) is None
    ignored = {
        sample.labels["reason"]: sample.value
        for metric in auth.ignored_markers.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert (ignored["replay"], ignored["unsigned"], ignored["bad_mac"]) == (1.0, 1.0, 0.0)
