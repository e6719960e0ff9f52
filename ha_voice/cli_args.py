"""The options that every `ha-voice` command talking to a running node shares, and what they
resolve to: the node's URL, the API token, the TLS verification and a client.

The flags: `--url` (`url_argument`: one node's API, default this host's; or
`client_arguments`: a node's API, default the primary found by mDNS, with `--cluster`,
`--deadline` and `--json`), `--token-file` and `--token-name` (`token_arguments`) and
`--ca-file` (`ca_argument`). The resolvers read a parsed namespace that has those flags' dests.

Invariants:
- A flag overrides the environment, which overrides the configuration (`load_config`, read
  only when a flag is absent), as for the daemon's own keys.
- Errors are ConfigError (the CLI exits 2): a `--token-name` without a token file, an
  unreadable or malformed token file, a plain-HTTP `--url` where TLS is configured. A token is
  never echoed.
- Light to import, like cli.py: the standard library, the configuration model and the token
  format only; `ha_voice.client` (httpx) is imported when a client or TLS context is made.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ha_voice.config import load_config
from ha_voice.errors import ConfigError
from ha_voice.tokens import TOKEN_ENV, pick_token, read_token_file

if TYPE_CHECKING:
    import ssl

    from ha_voice.client import HAVoiceClient

__all__ = [
    "base_url",
    "ca_argument",
    "client",
    "client_arguments",
    "token",
    "token_arguments",
    "url_argument",
    "verify",
]


def url_argument(parser: argparse.ArgumentParser) -> None:
    """`--url`: one node's API (dest `url`, default None: this host's, see `base_url`)."""
    parser.add_argument(
        "--url",
        default=None,
        help="any node's API (default: http://127.0.0.1:PORT with PORT from the configuration)",
    )


def client_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a command sent to the primary (`send`, `listen`, `journal`): `--url`,
    `--cluster`, `--deadline` (seconds, default 10), `--json`, the token's and `--ca-file`;
    what `client` reads."""
    parser.add_argument("--url", help="a node's API (default: find the primary by mDNS)")
    parser.add_argument("--cluster", help="cluster name to look up (default: configured)")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds, retries included")
    parser.add_argument("--json", action="store_true", help="print the JSON answer")
    token_arguments(parser)
    ca_argument(parser)


def token_arguments(parser: argparse.ArgumentParser) -> None:
    """`--token-file FILE` (dest `token_file`, a Path or None) and `--token-name` (dest
    `token_name`, None for the file's first); what `token` reads."""
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"API tokens, one NAME:TOKEN per line, mode 0600 (default: ${TOKEN_ENV}, else the "
        "configured api_token_file if readable)",
    )
    parser.add_argument("--token-name", help="which token of --token-file (default: the first)")


def ca_argument(parser: argparse.ArgumentParser) -> None:
    """`--ca-file FILE` (dest `ca_file`, a Path or None); what `verify` and `client` read."""
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="CA certificates that verify the nodes' HTTPS (default: the configured tls_ca_file)",
    )


def token(args: argparse.Namespace) -> str | None:
    """--token-file (--token-name), else HA_VOICE_TOKEN, else the configured api_token_file;
    None if none is given and the configured file is unset or unreadable. ConfigError for a
    `--token-name` without a file, or a file that does not parse or lacks that name."""
    path: Path | None = args.token_file
    if path is None and not args.token_name:
        if os.environ.get(TOKEN_ENV):
            return os.environ[TOKEN_ENV]
        path = load_config().api_token_file
        if path is None or not os.access(path, os.R_OK):
            return None
    if path is None:
        raise ConfigError("--token-name needs --token-file (or the configured api_token_file)")
    return pick_token(read_token_file(path, "--token-file"), args.token_name, str(path))


def verify(args: argparse.Namespace) -> ssl.SSLContext | bool:
    """How httpx verifies the nodes' HTTPS (`client.ssl_context`): a context of the CA
    certificates in --ca-file, else in the configured tls_ca_file, else True (the system's)."""
    from ha_voice.client import ssl_context

    ca_file = args.ca_file or load_config().tls_ca_file
    return ssl_context(ca_file)


def client(args: argparse.Namespace) -> HAVoiceClient:
    """A client of the flags of `client_arguments`, the cluster and CA file defaulting to the
    configured ones; ConfigError for a plain-HTTP --url where TLS is configured."""
    from ha_voice.client import HAVoiceClient

    cluster = args.cluster or load_config().cluster
    try:
        return HAVoiceClient(
            url=args.url,
            cluster=cluster,
            deadline_s=args.deadline,
            token=token(args) or "",
            ca_file=args.ca_file or load_config().tls_ca_file,  # given: TLS is required
        )
    except ValueError as exc:  # a plain-HTTP --url where TLS is configured
        raise ConfigError(str(exc)) from None


def base_url(args: argparse.Namespace) -> str:
    """--url without a trailing slash, else this host's node: `http(s)://127.0.0.1:PORT`, the
    scheme and port the configuration gives the daemon."""
    if args.url:
        return str(args.url).rstrip("/")
    config = load_config()
    scheme = "http" if config.tls_cert_file is None else "https"
    return f"{scheme}://127.0.0.1:{config.port}"
