"""The daemon's configuration: one typed model from which every source and the docs derive.

Invariants:
- Each setting is declared once, as a field of `Config`: its TOML key is the field name, its
  environment variable `HA_VOICE_<NAME>`, its flag `--<name-with-dashes>`, and its row in
  docs/configuration.md comes from the field's type, default, bounds and description.
- Every field has a unit in its name or type, a default, a bound and a description saying why.
- Sources stack key by key: defaults < TOML file < environment < flags.
- A `Config` that exists is safe to run: bounds, peer syntax, membership rules and the election
  timers' lease inequality (`ha_voice.cluster.timers`) are all checked when it is built.
- Loading fails only with `ConfigError`, one line per problem, each naming the source, the key,
  the value, what is allowed and a fix.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args, get_origin

from annotated_types import Ge, Le, MaxLen
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, core_schema

from ha_voice.cluster.protocol import MAX_NODE_ID_BYTES, MIN_KEY_BYTES
from ha_voice.cluster.timers import (
    PROFILES,
    ElectionTimers,
    TimerProblem,
    TimerProfile,
    resolve_timers,
    timer_problems,
    timers_for,
)
from ha_voice.errors import ConfigError
from ha_voice.keyfiles import read_private
from ha_voice.tokens import TOKEN_ENV

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "FIELDS",
    "REGENERATE_DOCS",
    "TIMER_FIELDS",
    "Check",
    "Config",
    "PeerSpec",
    "Role",
    "Rule",
    "Unit",
    "bounds_text",
    "core_type",
    "default_node_id",
    "default_text",
    "env_var_name",
    "flag_name",
    "is_optional",
    "load_config",
    "parse_source",
    "read_accepted_keys",
    "read_cluster_key",
    "toml_value",
    "type_text",
    "unit_of",
]

ENV_PREFIX: Final = "HA_VOICE_"
CONFIG_ENV: Final = "HA_VOICE_CONFIG"
DEFAULT_CONFIG_PATH: Final = Path("/etc/ha-voice/config.toml")
REGENERATE_DOCS: Final = "python -m ha_voice.config_render --markdown > docs/configuration.md"

_PORT_MAX: Final = 65535
# The cluster name is the mDNS instance label of the service; 32 leaves room in the 63-byte
# DNS label for the suffixes zeroconf adds on a name conflict.
_CLUSTER_MAX: Final = 32
# The primary heartbeats every peer each interval; a voice cluster of Jetsons has 2 to 5 boards.
_MAX_PEERS: Final = 15
TIMER_FIELDS: Final = (
    "heartbeat_interval_s",
    "election_timeout_s",
    "lease_timeout_s",
    "priority_skew_s",
    "election_jitter_s",
)
# faster-whisper's own size names (faster_whisper.utils._MODELS); anything with a "/" is a
# local directory or a Hugging Face repo id, as faster-whisper itself decides.
_WHISPER_SIZES: Final = (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "distil-small.en", "medium",
    "medium.en", "distil-medium.en", "large-v1", "large-v2", "large-v3", "large",
    "distil-large-v2", "distil-large-v3", "distil-large-v3.5", "large-v3-turbo", "turbo",
)  # fmt: skip
_PEER_FORMAT: Final = "NODE_ID or NODE_ID@HOST:PORT"
# The shortest prefix trusted_networks takes, by IP version: the largest private block of each,
# 10.0.0.0/8 (RFC 1918) and fc00::/7 (RFC 4193). Anything wider reaches past any one site's
# network, and /0 is everyone.
_SHORTEST_TRUSTED_PREFIX: Final = {4: 8, 6: 7}
_IPV4_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_TLS_FIELDS: Final = ("tls_cert_file", "tls_key_file", "tls_ca_file")


def _name_pattern(max_chars: int, dots: bool = True) -> str:
    allowed = "A-Za-z0-9._-" if dots else "A-Za-z0-9_-"
    return rf"^[A-Za-z0-9][{allowed}]{{0,{max_chars - 1}}}$"


# Node ids and the cluster name become mDNS labels: no dots (zeroconf splits names on them),
# at most 63 bytes (RFC 1035 §2.3.4).
_LABEL_MAX: Final = min(MAX_NODE_ID_BYTES, 63)
_NODE_ID_PATTERN: Final = _name_pattern(_LABEL_MAX, dots=False)
_PEER_RE: Final = re.compile(
    rf"(?P<node>{_NODE_ID_PATTERN[1:-1]})"
    r"(?:@(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):(?P<port>[0-9]{1,5}))?"
)


@dataclass(frozen=True)
class Rule:
    """A bound that pydantic metadata cannot state: `check` returns the value or raises
    ValueError, and `text` words the bound for the docs and the error messages."""

    text: str
    check: Callable[[Any], Any]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))


@dataclass(frozen=True)
class PeerSpec:
    """One parsed peer entry: a node id and, where multicast is blocked, its static address."""

    node_id: str
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> PeerSpec:
        """`NODE_ID` or `NODE_ID@HOST:PORT` parsed; ValueError naming the entry otherwise."""
        match = _PEER_RE.fullmatch(entry)
        if match is None:
            raise ValueError(f"{entry!r} is not {_PEER_FORMAT}")
        if match["port"] is None:
            return cls(match["node"])
        port = int(match["port"])
        if not 1 <= port <= _PORT_MAX:
            raise ValueError(f"port {port} in {entry!r} is outside 1 to {_PORT_MAX}")
        return cls(match["node"], match["host"], port)

    def __str__(self) -> str:
        return self.node_id if self.host is None else f"{self.node_id}@{self.host}:{self.port}"


def default_node_id() -> str:
    """This host's name made a valid node id ("node" if nothing of it is left)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()).lstrip("_-")
    return cleaned[:_LABEL_MAX] or "node"


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"{str(path)!r} is a relative path")
    return path


def _robot_backend(text: str) -> str:
    if text in ("go2", "sim", "none"):
        return text
    if text.startswith("sim://"):
        host, _, port = text[len("sim://") :].rpartition(":")
        if host and port.isdigit() and 0 < int(port) <= _PORT_MAX:
            return text
    raise ValueError(f"{text!r} is not go2, sim, none or sim://HOST:PORT")


def _optional_absolute(path: Path | None) -> Path | None:
    return None if path is None else _absolute(path)


def _ipv4_interface(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        interface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address with a prefix length") from None
    if "/" not in text:
        raise ValueError(f"{text!r} has no prefix length, e.g. {text}/24")
    return str(interface)


def _ipv4(text: str) -> str:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None
    return text


def _networks(entries: list[str]) -> list[str]:
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not a CIDR network ({exc})") from None
        _check_trust_scope(entry, network)
    return entries


def _check_trust_scope(entry: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """ValueError for a network wider than any robot network can be, or one that would match
    nothing (IPv4-mapped IPv6: clients are compared as IPv4)."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        start = network.network_address.ipv4_mapped
        ipv4 = ipaddress.IPv4Network((start, network.prefixlen - _IPV4_MAPPED.prefixlen))
        _check_width(entry, ipv4)
        raise ValueError(
            f"{entry!r} is an IPv4-mapped IPv6 network, which never matches (clients are "
            f"compared as IPv4): write it as {ipv4}"
        )
    _check_width(entry, network)


def _check_width(entry: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    shortest = _SHORTEST_TRUSTED_PREFIX[network.version]
    if network.prefixlen >= shortest:
        return
    bits = network.max_prefixlen - network.prefixlen
    everyone = "every address" if bits == network.max_prefixlen else f"2^{bits} addresses"
    raise ValueError(
        f"{entry!r} trusts {everyone} (IPv{network.version} allows /{shortest} or longer), so "
        "anyone who reaches the port could drive the robot without a token: list only the "
        "robot's own network, such as 192.168.123.0/24, and give other clients a token "
        "(api_token_file)"
    )


def _peer_list(entries: list[str]) -> list[str]:
    seen: set[str] = set()
    for entry in entries:
        node = PeerSpec.parse(entry).node_id
        if node in seen:
            raise ValueError(f"node id {node!r} is listed twice")
        seen.add(node)
    return entries


def parse_source(entry: str) -> tuple[str, str]:
    """An `audio_sources` entry as (kind, target): ("udp", "HOST:PORT"), ("alsa", DEVICE),
    ("pulse", DEVICE), ("file", PATH) or ("url", URL); ValueError naming what is wrong."""
    if entry.startswith("udp://"):
        host, _, port = entry[len("udp://") :].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry!r}: write udp://HOST:PORT, e.g. udp://0.0.0.0:9999")
        return "udp", f"{host}:{port}"
    for kind in ("alsa", "pulse", "file"):
        if entry.startswith(f"{kind}:"):
            target = entry[len(kind) + 1 :]
            if not target:
                raise ValueError(f"{entry!r}: name the {kind} device or path after '{kind}:'")
            return kind, target
    if "://" in entry:
        return "url", entry
    raise ValueError(
        f"{entry!r} is no audio source: write udp://HOST:PORT, alsa:DEVICE, pulse:DEVICE, "
        "file:PATH or a URL FFmpeg opens"
    )


def _audio_sources(entries: list[str]) -> list[str]:
    for entry in entries:
        parse_source(entry)
    if len(set(entries)) != len(entries):
        raise ValueError("a source is listed twice")
    return entries


# `audio_sources` and `local_audio_sources`: each entry parsed (parse_source), none twice.
AudioSources = Annotated[
    list[str],
    Rule(
        "each udp://HOST:PORT, alsa:DEVICE, pulse:DEVICE, file:PATH or a URL FFmpeg opens",
        _audio_sources,
    ),
]


def _witness(entry: str | None) -> str | None:
    if entry is not None:
        PeerSpec.parse(entry)
    return entry


def _whisper_model(name: str) -> str:
    if "/" not in name and name not in _WHISPER_SIZES:
        raise ValueError(f"{name!r} is no faster-whisper model size")
    return name


def _language_code(value: object) -> object:
    # The seed passes a BCP 47 tag such as "nl-NL"; Whisper and the vocabularies use "nl".
    if isinstance(value, str):
        return re.split(r"[-_]", value.strip(), maxsplit=1)[0].lower()
    return value


Port = Annotated[int, Field(ge=1, le=_PORT_MAX)]
IPv4Text = Annotated[str, Rule("an IPv4 address such as 192.168.123.161", _ipv4)]
AbsolutePath = Annotated[Path, Rule("an absolute path", _absolute)]
OptionalPath = Annotated[Path | None, Rule("an absolute path", _optional_absolute)]


# Keys only the Go2 backend reads (the seed's robot flags).
_ROBOT_KEYS: Final = frozenset({"robot_ip", "network_interface"})


class Config(BaseModel):
    """The daemon's whole configuration; each field is one TOML key, variable and flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(
        default_factory=default_node_id,
        pattern=_NODE_ID_PATTERN,
        json_schema_extra={"default_text": "<host name>"},
        description="This node's unique name in the cluster, 1 to 63 characters of letters, "
        "digits, '_' and '-', because it becomes an mDNS label (no dots, at most 63 bytes); the "
        "sanitised host name is the default as it is already unique on a LAN.",
    )
    cluster: str = Field(
        default="ha-voice",
        pattern=_name_pattern(_CLUSTER_MAX, dots=False),
        description="The cluster's name, the same on all of its nodes, at most 32 characters of "
        "letters, digits, '_' and '-' because it becomes the mDNS instance label of the "
        "service and keys the message MACs, so two clusters on one LAN never mix.",
    )
    cluster_key_file: AbsolutePath = Field(
        default=Path("/etc/ha-voice/cluster.key"),
        description="Absolute path of the shared secret (at least 16 bytes, the same file on "
        "every node) that authenticates every cluster message with HMAC-SHA256; absolute "
        "because systemd starts the daemon in /, and only the path is checked at load.",
    )
    cluster_key_accepted_file: OptionalPath = Field(
        default=None,
        description="Optional absolute path of a second cluster key that is accepted but never "
        "signs, so that the key can be changed one node at a time without losing the primary "
        "(docs/operations.md, 'Rotating the cluster key'); unset outside a rotation, because "
        "every accepted key is one more secret to lose.",
    )
    api_token_file: OptionalPath = Field(
        default=None,
        description="Optional absolute path of the API's bearer tokens (mode 0600, one "
        "NAME:TOKEN per line, tokens of at least 24 characters, re-read when the file changes): "
        "robot commands, settings and step-down need one of them; unset, those routes refuse "
        "every client outside trusted_networks, so a node is never open by accident.",
    )
    trusted_networks: Annotated[
        list[str],
        Rule(
            "each a CIDR network such as 192.168.123.0/24, of prefix /8 or longer (IPv6: /7)",
            _networks,
        ),
    ] = Field(
        default_factory=list,
        max_length=32,
        description="Client networks (CIDR, at most 32) whose requests need no token, for the "
        "seed's clients on an isolated robot network; empty by default because anyone who can "
        "send from such an address may then drive the robot, and logged as a warning at every "
        "start.",
    )
    tls_cert_file: OptionalPath = Field(
        default=None,
        description="Optional absolute path of the API's TLS certificate (PEM, chain included, "
        "naming the node's IP addresses); set with tls_key_file and tls_ca_file to serve HTTPS, "
        "unset for plain HTTP, which carries tokens in clear text.",
    )
    tls_key_file: OptionalPath = Field(
        default=None,
        description="Optional absolute path of tls_cert_file's private key (PEM, mode 0600, "
        "unencrypted because the daemon starts unattended); required with tls_cert_file.",
    )
    tls_ca_file: OptionalPath = Field(
        default=None,
        description="Optional absolute path of the CA certificates (PEM) that signed the nodes' "
        "certificates: a backup verifies the primary against them before it forwards a "
        "client's token, and ha-voice send, status and step-down use them; required with "
        "tls_cert_file.",
    )
    state_dir: AbsolutePath = Field(
        default=Path("/var/lib/ha-voice"),
        description="Absolute path of the directory that holds the durable term, vote and "
        "command journal (SQLite), absolute so it never depends on the working directory.",
    )
    stall_timeout_s: float = Field(
        default=2.0,
        ge=0.1,
        le=60.0,
        description="Seconds a write may wait for the disk, or the main loop (HTTP, robot) "
        "may not run, before the node declares itself unable to serve (FAULT: a primary hands "
        "over, a backup stands for nothing) until it moves again; an fsync on a healthy SD card "
        "takes milliseconds, a garbage collection a tenth of a second.",
    )
    priority: int = Field(
        default=100,
        ge=1,
        le=254,
        description="Election priority from 1 to 254, higher wins, so the best healthy backup "
        "stands first; 0 and 255 are left out as in VRRP (RFC 5798), where 0 means release "
        "and 255 the address owner.",
    )
    peers: Annotated[list[str], Rule(f"each {_PEER_FORMAT}, no node id twice", _peer_list)] = Field(
        default_factory=list,
        max_length=_MAX_PEERS,
        description="The other voting nodes, each NODE_ID or NODE_ID@HOST:PORT (a static "
        "address where multicast is blocked), at most 15 because the primary heartbeats "
        "each of them every interval; never this node itself.",
    )
    witness: Annotated[str | None, Rule(_PEER_FORMAT, _witness)] = Field(
        default=None,
        description="A node that votes but never leads (e.g. on the robot's own PC), written "
        "like a peer entry, unset for none; it gives two full nodes a majority without "
        "two_node's split-brain risk.",
    )
    two_node: bool = Field(
        default=False,
        description="Let either of exactly two nodes (one peer, no witness) lead alone while "
        "it reaches the robot; off by default because a network partition then makes two "
        "primaries (split brain), so prefer a witness.",
    )
    preempt: bool = Field(
        default=False,
        description="Whether a returning node of higher priority takes leadership back after "
        "preempt_delay_s; off by default because every handover pauses robot commands.",
    )
    preempt_delay_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Seconds a returning higher-priority node must stay healthy before it "
        "preempts, 0 to 3600, so a node that reboots in a loop never takes over between crashes.",
    )
    timer_profile: TimerProfile = Field(
        default="wired",
        description="The election timers to start from: wired for Ethernet, fast for a "
        "dedicated wired LAN and lightly loaded nodes (a lost host replaced as fast as VRRP at "
        "0.1 s adverts, but a 0.2 s stall of a node costs its lease), wifi for longer timers "
        "that survive a lossy radio link (see Timer profiles); the five timer keys each "
        "override one of its values.",
    )
    heartbeat_interval_s: float | None = Field(
        default=None,
        ge=0.01,
        le=5.0,
        description="Seconds between the primary's heartbeats, 0.01 to 5, unset for the "
        "profile's; set alone, the profile's election timeout, skew and jitter follow it in "
        "proportion (and the lease follows the timeout), so any value is a valid configuration; "
        "faster than 10 ms adds packets but no faster detection than scheduling jitter allows, "
        "slower than 5 s makes a failover take tens of seconds.",
    )
    election_timeout_s: float | None = Field(
        default=None,
        ge=0.03,
        le=120,
        description="Seconds a backup waits without a valid heartbeat before it stands for "
        "election, 0.03 to 120, unset for the profile's (scaled to a changed heartbeat); it "
        "must span at least 3 heartbeat intervals (VRRP's three missed adverts), checked at load.",
    )
    lease_timeout_s: float | None = Field(
        default=None,
        ge=0.02,
        le=120,
        description="Seconds the primary may command the robot after its last quorum "
        "acknowledgement, 0.02 to 120, unset to derive it; it must stay below "
        "election_timeout_s x (1 - drift) / (1 + drift) so two primaries never overlap.",
    )
    priority_skew_s: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Largest extra election delay in seconds that a lower priority adds, 0 to "
        "10, unset for the profile's, so the highest-priority healthy backup stands first.",
    )
    election_jitter_s: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Largest random delay in seconds added to each election timeout, 0 to 10, "
        "unset for the profile's, so backups of equal priority rarely stand at once (Raft).",
    )
    clock_drift_ppm: int = Field(
        default=10_000,
        ge=0,
        le=100_000,
        description="Bound on how far any node's clock rate may stray from real time, in parts "
        "per million, 0 to 100000; 10000 (1 %) is far above crystal drift (~50 ppm) and NTP "
        "slewing (500 ppm), covers frequency scaling and VM steal, and costs 2 % of the lease.",
    )
    listen_address: IPv4Text = Field(
        default="0.0.0.0",
        description="IPv4 address the cluster's UDP socket (heartbeats, votes, replication) "
        "binds to, 0.0.0.0 for every interface, or one of this node's addresses to keep the "
        "cluster's traffic on one network; the HTTP API binds api_listen_address instead. "
        "IPv4 only because the Go2's own network is IPv4.",
    )
    api_listen_address: IPv4Text = Field(
        default="0.0.0.0",
        description="IPv4 address the HTTP API binds to, 0.0.0.0 for every interface; every "
        "interface by default so that clients reach the primary at each of its addresses, "
        "the floating IP (vip) included, which a bind to one address would refuse.",
    )
    cluster_port: Port = Field(
        default=7405,
        description="UDP port for heartbeats, votes and replication, 1 to 65535 (0 would let "
        "the OS pick one that peers cannot find).",
    )
    port: Port = Field(
        default=8888,
        description="TCP port of the HTTP API, 1 to 65535, 8888 as the seed's --port so "
        "existing clients keep working.",
    )
    api_max_body_bytes: int = Field(
        default=16_384,
        ge=1024,
        le=1_048_576,
        description="Largest request body in bytes that the JSON routes (commands, listen's "
        "transcripts, settings, step-down) read, 1024 to 1048576; 16 KiB is twenty times the "
        "largest valid command and small enough to parse without delaying a heartbeat; larger "
        "bodies get 413 before they are read.",
    )
    audio_max_bytes: int = Field(
        default=8_388_608,
        ge=65_536,
        le=67_108_864,
        description="Largest audio upload in bytes that /api/voice/listen and "
        "/v1/audio/transcriptions read (raw, multipart, or base64 in JSON, which is a third "
        "larger), 65536 to 67108864; 8 MiB holds 30 s of 48 kHz stereo WAV with room to spare; "
        "larger uploads get 413 before they are read, and at most 8 uploads are held at once, "
        "so uploads take at most 8 times this much memory; api_body_timeout_s must allow for "
        "sending it.",
    )
    listen_max_audio_s: float = Field(
        default=30.0,
        ge=1.0,
        le=300.0,
        description="Longest audio in seconds that /api/voice/listen decodes, 1 to 300; a "
        "spoken command takes a few seconds and Whisper hears 30 s at a time; longer audio "
        "gets 413, judged while decoding, so a small file that expands to hours costs no more "
        "than this.",
    )
    audio_sources: AudioSources = Field(
        default_factory=list,
        max_length=8,
        description="What the primary listens to while listening is on (at most 8): "
        "udp://HOST:PORT for raw PCM datagrams (the Go2 streamer's format, audio_udp_*), "
        "alsa:DEVICE or pulse:DEVICE for a microphone, file:PATH or any URL FFmpeg opens; "
        "empty by default: a node listens to nothing until told what.",
    )
    local_audio_sources: AudioSources = Field(
        default_factory=list,
        max_length=8,
        description="What this node listens to while listening is on whatever its role (at "
        "most 8; a witness listens to nothing): the microphones attached to this Jetson, as "
        "alsa:DEVICE or pulse:DEVICE (any audio_sources form is taken). A backup recognises "
        "what they hear and hands the commands to the primary, so the microphones go on "
        "hearing through a failover; empty by default.",
    )
    audio_udp_rate_hz: int = Field(
        default=16_000,
        ge=8_000,
        le=48_000,
        description="Sample rate in Hz of udp:// sources, 8000 to 48000; 16000 is the seed's "
        "streamer and what Whisper takes (other rates are resampled).",
    )
    audio_udp_width: Literal[1, 2, 4] = Field(
        default=2,
        description="Bytes per sample of udp:// sources: 1 (unsigned 8-bit), 2 (s16le, the "
        "seed's streamer) or 4 (s32le).",
    )
    audio_udp_channels: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Interleaved channels of udp:// sources, 1 to 8, mixed down to mono.",
    )
    audio_queue_blocks: int = Field(
        default=256,
        ge=8,
        le=4096,
        description="Blocks (datagrams) a source may hold before the listener takes them, 8 "
        "to 4096; 256 datagrams of 1024 bytes are 8 s of the seed's stream. Past it, "
        "datagrams are dropped and counted (ha_voice_audio_packets_dropped_total).",
    )
    vad_speech_probability: float = Field(
        default=0.5,
        ge=0.05,
        le=0.95,
        description="Speech probability (Silero VAD) at or above which a 32 ms frame is "
        "speech, 0.05 to 0.95; 0.5 is Silero's default, higher for noisy places.",
    )
    vad_min_silence_s: float = Field(
        default=0.4,
        ge=0.1,
        le=3.0,
        description="Seconds of silence that end an utterance, 0.1 to 3; the end-of-speech "
        "wait every command pays, and a pause inside a phrase must be shorter.",
    )
    vad_pad_s: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Seconds of audio kept before and after the speech VAD found, 0 to 1, so "
        "that soft first and last sounds reach the recogniser.",
    )
    vad_max_utterance_s: float = Field(
        default=10.0,
        ge=1.0,
        le=30.0,
        description="Longest utterance in seconds, 1 to 30 (Whisper hears 30 s at a time): "
        "longer speech is cut there, so chatter never holds more than this in memory.",
    )
    listen_early_stop_s: float = Field(
        default=0.12,
        ge=0.0,
        le=1.0,
        description="Seconds of pause after a short utterance at which a spoken stop runs, "
        "0 to 1 and below vad_min_silence_s; 0 is off. The utterance so far (at most 1.2 s of "
        "speech) is recognised then and runs only if it is a stop; a motion always waits for "
        "vad_min_silence_s. Pauses inside generated Dutch commands were all shorter "
        "(docs/voice.md).",
    )
    require_wake_word: bool = Field(
        default=False,
        description="Whether live listening runs only commands said after one of the "
        "vocabulary's wake words (robot, hond, …), for noisy places; posted audio and text "
        "are not affected.",
    )
    listen_dedup_s: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        description="Seconds within which the same command heard by several sources (a "
        "Jetson's microphone and the robot's stream) is one command, the best hearing "
        "winning, 0 to 10; the same command said twice further apart runs twice.",
    )
    transcription_max_audio_s: float = Field(
        default=300.0,
        ge=1.0,
        le=3600.0,
        description="Longest audio in seconds that /v1/audio/transcriptions decodes, 1 to "
        "3600; 300 s of 16 kHz float32 is 19 MB in memory and a few minutes of batch work on a "
        "CPU; longer audio gets 413, judged while decoding.",
    )
    api_header_timeout_s: float = Field(
        default=10.0,
        ge=0.5,
        le=120.0,
        description="Seconds a client has to send a complete request head, from connecting or "
        "from the first byte of a later request, 0.5 to 120; then 408 and the connection is "
        "closed, so connections that never finish their headers (slowloris) are not held.",
    )
    api_body_timeout_s: float = Field(
        default=10.0,
        ge=0.5,
        le=300.0,
        description="Seconds a client has to send a whole request body once its head has "
        "arrived, 0.5 to 300; then 408 and the connection is closed; 10 s moves 16 KiB even "
        "at 2 kB/s.",
    )
    api_keepalive_timeout_s: float = Field(
        default=5.0,
        ge=0.1,
        le=300.0,
        description="Seconds an idle kept-alive connection stays open after an answer, 0.1 to "
        "300; 5 as uvicorn's default, long enough for a client's next command and short enough "
        "that idle connections do not pile up.",
    )
    api_max_connections: int = Field(
        default=1024,
        ge=8,
        le=16_384,
        description="Open HTTP connections this node holds at once from clients, 8 to 16384, a "
        "TLS handshake under way included; one more is answered 503 and closed at once, so no "
        "number of idle or slow clients can exhaust file descriptors; the cluster's members "
        "(forwards) have a pool of the same size of their own, and the soft open-file limit is "
        "raised to the hard one at start, both pools shrunk to fit under it if they must; 1024 "
        "because a primary flooded by 1000 clients held about 550: its third of them plus up "
        "to 100 forwards from each backup.",
    )
    api_rate_per_s: float = Field(
        default=50.0,
        ge=0.1,
        le=10_000.0,
        description="Requests per second that one client address may make to the mutating "
        "routes of this node on average (a token bucket), 0.1 to 10000; beyond it 429 with "
        "Retry-After; 50 is several times a scripted client's steady rate.",
    )
    api_rate_burst: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Requests one client address may make at once before api_rate_per_s "
        "applies (the bucket's size), 1 to 100000, so a client that catches up after a "
        "failover is not refused.",
    )
    max_pending_commands: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="Commands the primary holds accepted but not yet answered (waiting for the "
        "journal or the robot), 1 to 4096; one more is answered 429 at once and never enters "
        "the journal, so a burst cannot queue minutes of robot work; stop is always taken.",
    )
    api_max_connections_per_client: int = Field(
        default=64,
        ge=1,
        le=16_384,
        description="Open HTTP connections one client address may hold at once, 1 to 16384; "
        "one more is answered 503 and closed at once, so one client can never take all of "
        "api_max_connections (a client holding 1100 idle connections once kept every stop "
        "out for 25 s); connections from the cluster's members (forwards) have a pool of "
        "their own and are never counted here; 64 is far more than a client sending commands "
        "needs, and it takes 16 addresses to fill the default pool.",
    )
    robot_ip: IPv4Text = Field(
        default="192.168.123.161",
        description="IPv4 address of the Go2 (the seed's --robot-ip), by default the address "
        "of the robot's Ethernet port.",
    )
    network_interface: str = Field(
        default="eth0",
        pattern=_name_pattern(15),
        description="Network interface on the robot's network that the Unitree SDK binds to "
        "(the seed's --network-interface), at most 15 characters as Linux allows (IFNAMSIZ).",
    )
    whisper_model: Annotated[
        str,
        Rule(f"one of {', '.join(_WHISPER_SIZES)}, or a path or repo id with '/'", _whisper_model),
    ] = Field(
        default="medium",
        description="The faster-whisper model: a size name, downloaded on first use, or a "
        "model directory or Hugging Face repo id containing '/'; medium as in the seed.",
    )
    whisper_download_root: OptionalPath = Field(
        default=None,
        description="Optional absolute path of the directory that models named by size are "
        "downloaded to and looked for in; unset: the Hugging Face cache (~/.cache/huggingface).",
    )
    whisper_local_files_only: bool = Field(
        default=False,
        description="Whether a model named by size is only looked for on disk (in "
        "whisper_download_root or the Hugging Face cache), never downloaded; set it where there "
        "is no internet, so that a missing model is named at once instead of after a timeout.",
    )
    stt_enabled: bool = Field(
        default=True,
        description="Whether this node loads the speech model and takes speech work; false for "
        "a node that only elects and drives the robot (a witness never has speech).",
    )
    stt_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where the model runs: cuda (a Jetson's GPU), cpu, or auto (cuda when "
        "CTranslate2 sees a CUDA device, else cpu).",
    )
    stt_compute_type: Literal[
        "auto",
        "default",
        "int8",
        "int8_float32",
        "int8_float16",
        "int8_bfloat16",
        "int16",
        "float16",
        "bfloat16",
        "float32",
    ] = Field(
        default="auto",
        description="CTranslate2's number format for the model: auto is int8 on a CPU and "
        "float16 on a GPU (int8_float16 where float16 is not supported); the others as "
        "CTranslate2 names them, which falls back to the nearest type the device supports.",
    )
    stt_cpu_threads: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Threads each speech worker computes with on the CPU, 0 to 64; 0 lets "
        "CTranslate2 choose; stt_workers x stt_cpu_threads above the core count only adds "
        "switching.",
    )
    stt_workers: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Speech worker processes, each with the model loaded, 1 to 16; jobs run in "
        "parallel up to this; one per GPU or per two CPU cores, since one job already uses "
        "several cores; each holds the model in memory (about 150 MB for base int8).",
    )
    stt_max_queue: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Speech jobs waiting for a worker, 1 to 1024; one more is refused with 503 "
        "and Retry-After at once, so a burst cannot queue minutes of work; 16 is about 5 s "
        "of commands for one worker.",
    )
    stt_job_timeout_s: float = Field(
        default=30.0,
        ge=1.0,
        le=600.0,
        description="Seconds a speech job may take from submission to answer, queueing "
        "included, 1 to 600; a worker still busy with it then is killed and restarted, and the "
        "job fails with 503, so one stuck job never holds a worker; 30 s is one Whisper window.",
    )
    wyoming_port: int = Field(
        default=10300,
        ge=0,
        le=_PORT_MAX,
        description="TCP port of the Wyoming speech-to-text server (Home Assistant's protocol, "
        "docs/voice.md) on a node with speech, bound to api_listen_address, 0 to 65535; 0 turns "
        "it off; 10300 as Wyoming's own faster-whisper server, the port Home Assistant "
        "suggests; the primary advertises it over mDNS as _wyoming._tcp.",
    )
    wyoming_commands: Literal["transcript", "command"] = Field(
        default="transcript",
        description="What the Wyoming server does with what it hears: transcript (answer the "
        "text only) or command (also run a recognised intent, through the journal as "
        "/api/voice/listen does); Wyoming has no authentication, so command lets anyone who "
        "reaches wyoming_port drive the robot: setting it is the operator's consent; a backup "
        "hands the command to the primary, which runs it only with the same setting.",
    )
    wyoming_max_connections: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Wyoming connections this node holds at once, 1 to 1024; one more is "
        "closed at once; each holds at most listen_max_audio_s of audio (at 48 kHz, 32-bit "
        "stereo 384 kB/s), so 8 bound the server to about 90 MB with the default 30 s.",
    )
    wyoming_idle_timeout_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="Seconds a Wyoming connection may send nothing (between events, or within "
        "one) before it is closed, 1 to 3600; 30 s is longer than any pause inside a spoken "
        "command and frees a slot held by a client that went away.",
    )
    language: Annotated[Literal["nl", "en"], BeforeValidator(_language_code)] = Field(
        default="nl",
        description="Spoken language, nl or en, because the intent vocabularies exist for "
        "these only; a regional tag such as the seed's nl-NL is cut to its language code.",
    )
    robot: Annotated[str, Rule("go2, sim, none or sim://HOST:PORT", _robot_backend)] = Field(
        default="none",
        description="Robot backend: go2 (unitree_sdk2py on network_interface), sim (a simulated "
        "Go2 inside this process), sim://HOST:PORT (one `ha-voice sim-robot` that all nodes "
        "share) or none; none by default so that a node without a robot still elects, but go2 "
        "when robot_ip or network_interface is set (the seed's flags: its command line drives "
        "the Go2); robot = none with either of them set to another than its default is refused, "
        "as every command would fail.",
    )
    on_takeover: Literal["stop", "none"] = Field(
        default="stop",
        description="What a new primary does to the robot before it accepts commands: stop "
        "(StopMove, then BalanceStand if standing), or none; stop by default because the old "
        "primary may have died mid-walk.",
    )
    mdns: bool = Field(
        default=True,
        description="Whether to register this node and browse for peers with mDNS, and to "
        "advertise the virtual endpoint there; turn off only where multicast is blocked and "
        "every peer has a static address.",
    )
    vip: Annotated[
        str | None, Rule("an IPv4 address with prefix, like 192.168.1.50/24", _ipv4_interface)
    ] = Field(
        default=None,
        description="Optional floating IPv4 address with prefix length, held by the primary "
        "only and announced with gratuitous ARP, for clients that cannot resolve mDNS; none by "
        "default because it needs CAP_NET_ADMIN and a free address on the LAN.",
    )
    vip_interface: str | None = Field(
        default=None,
        max_length=15,
        description="Network interface that carries the floating IP (15 characters at most, "
        "the Linux limit); required when vip is set.",
    )
    notify: Annotated[Path | None, Rule("an absolute path", _optional_absolute)] = Field(
        default=None,
        description="Optional absolute path of a script run on every role change with role, "
        "term and node id as arguments, one at a time and in order, like keepalived's notify "
        "scripts; its failure is logged and never delays the election.",
    )
    notify_timeout_s: float = Field(
        default=10.0,
        ge=0.1,
        le=300.0,
        description="Seconds after which a notify script still running is killed, so that one "
        "hung script cannot hold back the ones queued after it.",
    )
    shutdown_timeout_s: float = Field(
        default=5.0,
        ge=0.5,
        le=120.0,
        description="Seconds SIGTERM may take: hand over, withdraw the endpoint, drain requests; "
        "then the rest is cancelled; at a stop the node asks systemd for this plus 5 s "
        "(EXTEND_TIMEOUT_USEC), so any TimeoutStopSec below it is raised.",
    )
    journal_max_entries: int = Field(
        default=1000,
        ge=10,
        le=1_000_000,
        description="Commands the journal keeps (with their idempotency keys) before older ones "
        "are folded into a snapshot; a retry with a forgotten key runs as a new command.",
    )
    journal_max_age_s: float = Field(
        default=86_400.0,
        ge=60.0,
        le=30 * 86_400.0,
        description="Seconds a command stays in the journal however few there are; a day covers "
        "any client retry and a shift of operator questions.",
    )
    reexecute_window_s: float = Field(
        default=10.0,
        ge=0.0,
        le=300.0,
        description="Seconds after it was accepted that a new primary still runs an idempotent "
        "command whose outcome the old primary never recorded; older ones, and every "
        "non-idempotent one, are marked unknown and never repeated.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Least severe log level written; info by default because debug logs "
        "every heartbeat.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_non_bools(cls, value: object, info: ValidationInfo) -> object:
        # pydantic's lax mode reads true as 1; in a config file that is always a mistake.
        field = cls.model_fields[info.field_name or ""]
        if isinstance(value, bool) and field.annotation is not bool:
            raise ValueError("true/false is not allowed here")
        return value

    @model_validator(mode="before")
    @classmethod
    def _robot_keys_mean_go2(cls, data: object) -> object:
        """The seed's --robot-ip and --network-interface drive the Go2: without a `robot`
        key, either of them means robot = "go2" (the seed's command line works as it did)."""
        if isinstance(data, dict) and "robot" not in data and _ROBOT_KEYS & data.keys():
            return {**data, "robot": "go2"}
        return data

    @model_validator(mode="after")
    def _check_relations(self) -> Config:
        problems = (
            self._membership_problems()
            + self._timer_problems()
            + self._tls_problems()
            + self._robot_problems()
            + self._listening_problems()
        )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def peer_specs(self) -> tuple[PeerSpec, ...]:
        """The peers, parsed."""
        return tuple(PeerSpec.parse(entry) for entry in self.peers)

    @property
    def witness_spec(self) -> PeerSpec | None:
        """The witness, parsed, or None."""
        return None if self.witness is None else PeerSpec.parse(self.witness)

    def election_timers(self) -> ElectionTimers:
        """The profile's timers with this config's overrides; ValueError if they are unsafe."""
        overrides = {name: getattr(self, name) for name in TIMER_FIELDS}
        return timers_for(
            self.timer_profile,
            **{name: value for name, value in overrides.items() if value is not None},
            clock_drift=self.clock_drift_ppm / 1e6,
            preempt_delay_s=self.preempt_delay_s,
        )

    def _listening_problems(self) -> list[str]:
        found = []
        both = sorted(set(self.audio_sources) & set(self.local_audio_sources))
        if both:
            found.append(
                f"{both[0]!r} is in both audio_sources and local_audio_sources; allowed: each "
                "source in one list; fix: keep a microphone of this Jetson in local_audio_sources "
                "and the stream sent to the floating IP in audio_sources"
            )
        if self.listen_early_stop_s > 0 and self.vad_min_silence_s <= self.listen_early_stop_s:
            found.append(
                f"listen_early_stop_s = {self.listen_early_stop_s} is not below "
                f"vad_min_silence_s = {self.vad_min_silence_s}: the utterance would end before "
                "the early look; fix: make it smaller, or 0 for no early stop"
            )
        return found

    def _membership_problems(self) -> list[str]:
        peer_ids = [spec.node_id for spec in self.peer_specs]
        witness = self.witness_spec
        found = []
        if self.node_id in peer_ids:
            found.append(
                f"peers lists this node's own node_id {self.node_id!r}; allowed: the other "
                f"nodes only; fix: remove {self.node_id!r} from peers"
            )
        # witness == node_id is the witness's own configuration (`ha-voice witness`).
        if witness is not None and witness.node_id in peer_ids:
            found.append(
                f"witness {witness.node_id!r} is also in peers; allowed: a node that votes "
                "but never leads, listed once; fix: remove it from peers"
            )
        if (self.vip is None) != (self.vip_interface is None):
            found.append(
                "vip and vip_interface must be set together; fix: set both (vip = "
                '"192.168.1.50/24", vip_interface = "eth0") or neither'
            )
        if self.two_node and (len(peer_ids) != 1 or witness is not None):
            found.append(
                f"two_node = true found {len(peer_ids)} peers"
                f"{' and a witness' if witness else ''}; allowed: only with exactly one peer "
                "and no witness; fix: set two_node = false, and for two nodes add a witness "
                "(a third voter that never leads), which keeps a majority without split brain"
            )
        return found

    def _robot_problems(self) -> list[str]:
        # A key set to its default is no request for a robot: a rendered sample config has all.
        given = sorted(
            key
            for key in _ROBOT_KEYS & self.model_fields_set
            if getattr(self, key) != Config.model_fields[key].default
        )
        if self.robot != "none" or not given:
            return []
        keys = " and ".join(given)
        return [
            f"{keys} set but robot = 'none', which drives no robot: every command would fail; "
            f'allowed: {keys} with a robot backend; fix: set robot = "go2" (or leave robot '
            f"unset, and {keys} select go2), or unset {keys}"
        ]

    def _tls_problems(self) -> list[str]:
        given = [key for key in _TLS_FIELDS if getattr(self, key) is not None]
        if not given or len(given) == len(_TLS_FIELDS):
            return []
        missing = [key for key in _TLS_FIELDS if key not in given]
        return [
            f"{', '.join(given)} set without {', '.join(missing)}; allowed: all three (HTTPS, "
            "with peers verified against tls_ca_file) or none (plain HTTP); fix: set "
            f"{', '.join(missing)} (docs/operations.md, 'TLS for the API') or unset the others"
        ]

    def _timer_problems(self) -> list[str]:
        overrides = {name: getattr(self, name) for name in TIMER_FIELDS}
        timers, derived = resolve_timers(
            self.timer_profile,
            **{name: value for name, value in overrides.items() if value is not None},
            clock_drift=self.clock_drift_ppm / 1e6,
            preempt_delay_s=self.preempt_delay_s,
        )
        return [
            _timer_line(problem, self.timer_profile)
            for problem in timer_problems(timers, lease_derived=derived)
        ]


def _timer_line(problem: TimerProblem, profile: TimerProfile) -> str:
    """A timer fault in the config's words: the key, what is allowed given the other keys,
    and the fix (the profile's own values follow a changed heartbeat: see `resolve_timers`)."""
    key = "clock_drift_ppm" if problem.key == "clock_drift" else problem.key
    fix = f"set {key} in that range" if not problem.allowed.startswith("none") else ""
    if problem.fix:
        fix = f"{fix}, or {problem.fix}" if fix else problem.fix
    if key == "election_timeout_s":
        fix += ", or unset election_timeout_s so that it follows heartbeat_interval_s"
    elif key == "lease_timeout_s":
        fix += ", or lower clock_drift_ppm (it narrows the lease's bound)"
    return (
        f"unsafe election timers ({_profile_text(profile)}): {key} = {problem.value:g}: "
        f"{problem.why}; allowed: {problem.allowed}; fix: {fix}"
    )


def _profile_text(profile: TimerProfile) -> str:
    """'timer_profile = wired' with the profile's heartbeat and election timeout."""
    base = PROFILES[profile]
    return (
        f"timer_profile = {profile}: {base.heartbeat_interval_s:g} s heartbeats, "
        f"{base.election_timeout_s:g} s election timeout"
    )


FIELDS: Final = tuple(Config.model_fields)


# --- loading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    """Where a value came from, and how the operator changes it there."""

    where: str
    fix: str


_Settings = dict[str, tuple[object, _Origin]]
_DEFAULT: Final = _Origin("default", "set the key explicitly")


Role = Literal["node", "witness"]
# A check beyond the values (ha_voice.preflight): one line per problem, naming key and fix.
Check = Callable[[Config], list[str]]
_WITNESS_COMMAND: Final = _Origin(
    "ha-voice witness", "a witness is its own witness: leave witness unset on this host"
)


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    role: Role = "node",
    checks: Sequence[Check] = (),
) -> Config:
    """Defaults < TOML file < `HA_VOICE_*` environment < flags; ConfigError listing every fault.

    Without `path`, the file named by `HA_VOICE_CONFIG` is read, else the default path if it
    exists. `env` defaults to `os.environ`; in `flags` a None value means "not given". For
    `role="witness"` (`ha-voice witness`) an unset `witness` becomes this node's node_id, once
    every source has been read; a `witness` naming another node is a fault. Each of `checks`
    (the files a start needs: `ha_voice.preflight`) runs too, on the keys whose values are
    good, so that its problems come in the same round as the values'.
    """
    env = os.environ if env is None else env
    settings: _Settings = {}
    problems: list[str] = []
    for found, wrong in (
        _file_layer(_config_path(path, env)),
        _env_layer(env),
        _flag_layer(flags or {}),
    ):
        settings.update(found)
        problems.extend(wrong)
    if role == "witness":
        problems.extend(_as_witness(settings))
    config, invalid, bad = _validate(settings)
    problems.extend(invalid)
    if config is not None:
        checked = [line for check in checks for line in check(config)]
        problems.extend(line for line in checked if not _names_any(line, bad))
    if config is None or problems:
        raise ConfigError(_summary(problems))
    return config


def _as_witness(settings: _Settings) -> list[str]:
    """Make this node its own witness in `settings`; the fault if a source names another."""
    node_id, _ = settings.get("node_id", (default_node_id(), _DEFAULT))
    if "witness" not in settings:
        settings["witness"] = (node_id, _WITNESS_COMMAND)
        return []
    witness, origin = settings["witness"]
    if witness is None:  # unset by a source (HA_VOICE_WITNESS=""): as if never given
        settings["witness"] = (node_id, _WITNESS_COMMAND)
        return []
    try:
        if PeerSpec.parse(str(witness)).node_id == node_id:
            return []
    except ValueError:
        return []  # a malformed entry is the field's own problem, reported by validation
    return [
        f"{origin.where}: witness = {_show(witness)} but node_id = {_show(node_id)}; allowed: "
        "on the witness itself, its own node_id or unset (ha-voice witness sets it); fix: "
        f"{origin.fix} (unset it), or run ha-voice run if this host is a full node"
    ]


def _validate(settings: _Settings) -> tuple[Config | None, list[str], set[str]]:
    """The Config, or every problem in one round: each bad value, and the cross-key rules
    among the keys whose values are good (with a bad key at its default, a rule that names
    it would only speak of the default). With bad values, the Config is that of the good keys
    (if their rules hold), for further checks only, and the bad keys are named."""
    try:
        values = {key: value for key, (value, _) in settings.items()}
        return Config.model_validate(values), [], set()
    except ValidationError as exc:
        problems = _translate(exc, settings)
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    if not bad:
        return None, problems, bad
    good = {key: entry for key, entry in settings.items() if key not in bad}
    try:
        config = Config.model_validate({key: value for key, (value, _) in good.items()})
    except ValidationError as exc:
        problems.extend(line for line in _translate(exc, good) if not _names_any(line, bad))
        return None, problems, bad
    return config, problems, bad


def _names_any(line: str, keys: set[str]) -> bool:
    return any(re.search(rf"\b{key}\b", line) for key in keys)


def read_cluster_key(config: Config) -> bytes:
    """The shared cluster key from `config.cluster_key_file`; ConfigError with the fix if it is
    missing, short, unreadable, or readable or writable by group or others."""
    return _read_key("cluster_key_file", config.cluster_key_file)


def read_accepted_keys(config: Config) -> tuple[bytes, ...]:
    """The keys accepted besides the cluster key (a rotation), checked as `read_cluster_key`."""
    path = config.cluster_key_accepted_file
    return () if path is None else (_read_key("cluster_key_accepted_file", path),)


def _read_key(key: str, path: Path) -> bytes:
    fix = f"create one with: ha-voice keygen --no-token --key-file {path}"
    problem = f"{key} = {str(path)!r}"
    allowed = f"allowed: a file of at least {MIN_KEY_BYTES} bytes, the same on every node"
    try:
        data = read_private(path, key)
    except FileNotFoundError:
        raise ConfigError(f"{problem}: no such file; {allowed}; fix: {fix}") from None
    except OSError as exc:
        raise ConfigError(
            f"{problem}: cannot be read ({exc.strerror}); {allowed}; fix: let the ha-voice "
            f"user read it (chown it, chmod 600 {path}), or {fix}"
        ) from None
    if len(data) < MIN_KEY_BYTES:
        raise ConfigError(f"{problem}: only {len(data)} bytes; {allowed}; fix: {fix}")
    return data


def _config_path(path: Path | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return path
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    try:
        present = DEFAULT_CONFIG_PATH.exists()
    except OSError:  # /etc/ha-voice is 0750 root:ha-voice: reading it says why, with the fix
        present = True
    return DEFAULT_CONFIG_PATH if present else None


def _file_layer(path: Path | None) -> tuple[_Settings, list[str]]:
    if path is None:
        return {}, []
    where = f"config file {path}"
    settings: _Settings = {}
    problems = []
    for key, value in _read_toml(path).items():
        if isinstance(value, dict):
            problems.append(_section(where, f"[{key}]", value))
        elif _is_table_array(value):
            held = {name: None for table in value for name in table}
            problems.append(_section(where, f"[[{key}]]", held))
        elif key in FIELDS:
            settings[key] = (value, _Origin(where, f"edit {key} in {path}"))
        else:
            problems.append(_unknown(where, key, value, str))
    return settings, problems


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _section(where: str, header: str, table: Mapping[str, object]) -> str:
    """A TOML table (`[name]` or `[[name]]`): ha-voice reads top-level keys only, so the keys
    under it were not read."""
    held = ", ".join(table) or "no keys"
    return (
        f"{where}: {header} is a section, and sections are not used: every key is at the top "
        f"level; the section held {held}; fix: move those keys above the first [section] line "
        f"and delete the line {header}"
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fix = f"create it (keys: docs/configuration.md) or name an existing file in {CONFIG_ENV}"
        raise ConfigError(_summary([f"config file {path}: no such file; fix: {fix}"])) from None
    except (OSError, UnicodeError) as exc:
        fix = (
            "make it a UTF-8 text file that the ha-voice user can read; to read it as "
            "another user, join group ha-voice (sudo usermod -aG ha-voice $USER) or use sudo"
        )
        raise ConfigError(
            _summary([f"config file {path}: unreadable ({exc}); fix: {fix}"])
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        fix = 'correct that line (text needs quotes: node_id = "jetson-1")'
        raise ConfigError(
            _summary([f"config file {path}: TOML syntax error: {exc}; fix: {fix}"])
        ) from None


def _env_layer(env: Mapping[str, str]) -> tuple[_Settings, list[str]]:
    settings: _Settings = {}
    problems = []
    for var, raw in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var in (CONFIG_ENV, TOKEN_ENV):
            continue
        key = var.removeprefix(ENV_PREFIX).lower()
        where = f"environment variable {var}"
        if key in FIELDS and var == env_var_name(key):
            settings[key] = (_from_text(key, raw), _Origin(where, f"change or unset {var}"))
        else:
            problems.append(_unknown(where, key, raw, env_var_name))
    return settings, problems


def _flag_layer(flags: Mapping[str, object]) -> tuple[_Settings, list[str]]:
    settings: _Settings = {}
    problems = []
    for key, value in flags.items():
        if value is None:
            continue
        where = f"flag {flag_name(key)}"
        if key in FIELDS:
            settings[key] = (_from_flag(key, value), _Origin(where, f"change {flag_name(key)}"))
        else:
            problems.append(_unknown(where, key, value, flag_name))
    return settings, problems


def _from_text(key: str, raw: str) -> object:
    info = Config.model_fields[key]
    text = raw.strip()
    if not text and is_optional(info):
        return None
    return _split(text) if get_origin(info.annotation) is list else text


def _from_flag(key: str, value: object) -> object:
    if isinstance(value, str):
        return _from_text(key, value)
    if isinstance(value, list | tuple):
        return [part for item in value for part in _split(str(item))]
    return value


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _unknown(where: str, key: str, value: object, spell: Callable[[str], str]) -> str:
    guess = difflib.get_close_matches(key.lower().replace("-", "_"), FIELDS, n=1)
    fix = f"rename it to {spell(guess[0])} (the closest key) or remove it" if guess else "remove it"
    return (
        f"{where}: unknown key {key!r} = {_show(value)}; allowed: the keys in "
        f"docs/configuration.md; fix: {fix}"
    )


# pydantic error types reworded with their context; any other type keeps pydantic's message.
_REASONS: Final = {
    "greater_than_equal": "below the minimum {ge}",
    "less_than_equal": "above the maximum {le}",
    "string_pattern_mismatch": "does not match the pattern",
    "literal_error": "not one of the choices",
    "too_long": "too long ({actual_length} > {max_length})",
}


def _translate(exc: ValidationError, settings: _Settings) -> list[str]:
    lines = []
    for err in exc.errors():
        if err["loc"]:
            lines.append(_field_problem(err, settings))
        else:
            lines.extend(_relation_problem(line, settings) for line in _reason(err).splitlines())
    return lines


def _field_problem(err: ErrorDetails, settings: _Settings) -> str:
    loc = err["loc"]
    key = str(loc[0])
    value, origin = settings.get(key, (err["input"], _DEFAULT))
    label, shown = (key, value) if len(loc) == 1 else (f"{key}[{loc[1]}]", err["input"])
    return (
        f"{origin.where}: {label} = {_show(shown)}: {_reason(err)}; allowed: "
        f"{bounds_text(key)}; fix: {origin.fix} (default: {default_text(key)})"
    )


def _relation_problem(line: str, settings: _Settings) -> str:
    named = [key for key in FIELDS if key in settings and re.search(rf"\b{key}\b", line)]
    sources = ", ".join(
        f"{settings[key][1].where} ({key} = {_show(settings[key][0])})" for key in named
    )
    return f"{sources or 'defaults'}: {line}"


def _reason(err: ErrorDetails) -> str:
    ctx = err.get("ctx", {})
    if err["type"] == "value_error":
        return str(ctx["error"])
    template = _REASONS.get(err["type"])
    if template is not None:
        return template.format(**ctx)
    return err["msg"][:1].lower() + err["msg"][1:]


def _summary(problems: list[str]) -> str:
    noun = "problem" if len(problems) == 1 else "problems"
    return f"invalid configuration ({len(problems)} {noun}):\n" + "\n".join(
        f"  {problem}" for problem in problems
    )


# --- describing fields ---------------------------------------------------------------------

_TYPE_NAMES: Final[dict[Any, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    Path: "path",
}


@dataclass(frozen=True)
class Unit:
    """The unit a key's name ends in: how the docs' "type, unit" column and `--help` say it."""

    suffix: str
    text: str
    metavar: str


# The first suffix that ends a key is its unit, so a rate (`_per_s`) comes before seconds.
_UNITS: Final = (
    Unit("_per_s", "per second", "PER_SECOND"),
    Unit("_s", "seconds", "SECONDS"),
    Unit("_ppm", "parts per million", "PPM"),
    Unit("_bytes", "bytes", "BYTES"),
    Unit("port", "port number", "PORT"),
    Unit("_connections", "connections", "N"),
    Unit("_connections_per_client", "connections", "N"),
    Unit("_commands", "commands", "N"),
    Unit("_entries", "entries", "N"),
    Unit("_burst", "requests", "N"),
    Unit("_threads", "threads", "N"),
    Unit("_workers", "processes", "N"),
    Unit("_queue", "jobs", "N"),
    Unit("_hz", "hertz", "HZ"),
    Unit("_channels", "channels", "N"),
    Unit("_blocks", "blocks", "N"),
    Unit("_probability", "probability", "P"),
)


def env_var_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def is_optional(info: FieldInfo) -> bool:
    return type(None) in get_args(info.annotation)


def core_type(info: FieldInfo) -> Any:
    args = [arg for arg in get_args(info.annotation) if arg is not type(None)]
    return args[0] if is_optional(info) else info.annotation


def type_text(key: str) -> str:
    core = core_type(Config.model_fields[key])
    origin = get_origin(core)
    base = {Literal: "string", list: "list of strings"}.get(origin) or _TYPE_NAMES[core]
    unit = unit_of(key)
    return f"{base}, {unit.text}" if unit else base


def unit_of(key: str) -> Unit | None:
    """The unit `key`'s name ends in, or None for a key without one (a name, a priority)."""
    return next((unit for unit in _UNITS if key.endswith(unit.suffix)), None)


def bounds_text(key: str) -> str:
    """The field's bounds in words, from its type and metadata alone."""
    info = Config.model_fields[key]
    core = core_type(info)
    parts = []
    if core is bool:
        parts.append("true or false")
    if get_origin(core) is Literal:
        parts.append("one of " + ", ".join(map(str, get_args(core))))
    low = next((m.ge for m in info.metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, Le)), None)
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    for meta in info.metadata:
        if isinstance(meta, MaxLen):
            unit = "characters" if core is str else "entries"
            parts.append(f"at most {meta.max_length} {unit}")
        elif isinstance(meta, Rule):
            parts.append(meta.text)
        elif pattern := getattr(meta, "pattern", None):
            parts.append(f"matches `{pattern}`")
    if is_optional(info):
        parts.append("or unset")
    return "; ".join(parts)


def default_text(key: str) -> str:
    info = Config.model_fields[key]
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "default_text" in extra:
        return str(extra["default_text"])
    value = info.get_default(call_default_factory=True)
    return "unset" if value is None else toml_value(value)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, str | Path):
        # JSON's string escapes are a subset of TOML basic strings'.
        return json.dumps(str(value))
    return repr(value)


_show = toml_value


# --- command line and rendering ------------------------------------------------------------
