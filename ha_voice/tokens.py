"""API bearer tokens: the format of `api_token_file`, shared by the daemon, the CLI and keygen.

The file holds one token per line, `NAME:TOKEN` or a bare `TOKEN`; blank lines and lines whose
first non-blank character is `#` are ignored. NAME (1 to 32 of letters, digits, `.`, `_`, `-`)
is what the journal's `source` records for commands sent with that token; a bare token is named
`token-LINE` after its line number. TOKEN is an RFC 6750 §2.1 `b64token` (letters, digits and
`-._~+/`, then optional `=`), so it needs no quoting in a header, and it cannot contain the `:`
that separates it from its name.

Invariants:
- Parsing never echoes a token, not even a prefix: errors name the file, the line and the rule.
- A file that parses holds at least one token, no name twice and no token twice.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ha_voice.errors import ConfigError
from ha_voice.keyfiles import ExposedSecret, read_private

__all__ = [
    "MIN_TOKEN_CHARS",
    "TOKEN_ENV",
    "ApiToken",
    "TokenFileError",
    "check_token_name",
    "new_token",
    "parse_tokens",
    "pick_token",
    "read_token_file",
    "token_line",
]

# Read by the client library and the CLI when no token is given; not a configuration key.
TOKEN_ENV: Final = "HA_VOICE_TOKEN"
# 24 characters are 96 bits even as hex (`openssl rand -hex 12`), far beyond online guessing at
# any rate an HTTP server answers; `new_token` makes 43 (256 bits).
MIN_TOKEN_CHARS: Final = 24
_MAX_TOKEN_CHARS: Final = 512  # a header line, not a document
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_RULES: Final = (
    f"allowed: NAME:TOKEN or TOKEN per line, TOKEN {MIN_TOKEN_CHARS} to {_MAX_TOKEN_CHARS} "
    "characters of A-Z a-z 0-9 - . _ ~ + / (then optional =), NAME 1 to 32 of A-Z a-z 0-9 . _ -"
)
_FIX: Final = "fix: ha-voice keygen --no-key --add --token-name NAME --token-file {path}"


@dataclass(frozen=True)
class ApiToken:
    """One line of the token file: who (`name`) and the secret they send (`token`)."""

    name: str
    token: str
    line: int

    def __repr__(self) -> str:  # never a token in a log or a traceback
        return f"ApiToken(name={self.name!r}, line={self.line})"


def new_token() -> str:
    """A fresh random token: 32 bytes, base64url (43 characters, no padding)."""
    return secrets.token_urlsafe(32)


def check_token_name(name: str) -> None:
    """ConfigError if `name` cannot name a token (1 to 32 of letters, digits, `.`, `_`, `-`)."""
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"token name {name!r}: {_RULES}")


def token_line(name: str, token: str) -> str:
    """The file's line for `token` named `name`, newline included."""
    check_token_name(name)
    return f"{name}:{token}\n"


class TokenFileError(ConfigError):
    """A token file that cannot be used; `why` says so in a few words, without its path."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def parse_tokens(text: str, where: str, fix: str = "") -> list[ApiToken]:
    """Every token in `text`, in file order; TokenFileError listing each bad line of `where`."""
    found: list[ApiToken] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = _entry(line, number)
        if isinstance(entry, str):
            problems.append(f"line {number}: {entry}")
        else:
            problems.extend(_clashes(entry, found))
            found.append(entry)
    if not found and not problems:
        problems.append("holds no token")
    if problems:
        lines = "\n".join(f"  {where}: {problem}" for problem in problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TokenFileError(f"{lines}\n  {_RULES}{'; ' + fix if fix else ''}", problems[0] + more)
    return found


def read_token_file(path: Path, key: str = "api_token_file") -> list[ApiToken]:
    """The tokens of `path`; TokenFileError if it is missing, exposed (mode) or malformed."""
    where = f"{key} = {str(path)!r}"
    fix = _FIX.format(path=path)
    try:
        data = read_private(path, key)
    except FileNotFoundError:
        raise TokenFileError(
            f"{where}: no such file; fix: ha-voice keygen --no-key --token-file {path}",
            "no such file",
        ) from None
    except OSError as exc:
        raise TokenFileError(
            f"{where}: cannot be read ({exc.strerror}); fix: let the user ha-voice runs as "
            f"read it (chown it, chmod 600 {path})",
            f"cannot be read ({exc.strerror})",
        ) from None
    except ExposedSecret as exc:
        why = f"mode {exc.mode:04o}: group or others may read or write it"
        raise TokenFileError(str(exc), why) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise TokenFileError(
            f"{where}: not ASCII text; {_RULES}; {fix}", "not ASCII text"
        ) from None
    return parse_tokens(text, where, fix)


def pick_token(tokens: list[ApiToken], name: str | None, where: str) -> str:
    """The token named `name`, or the first; ConfigError naming the names there are."""
    if name is None:
        return tokens[0].token
    for entry in tokens:
        if entry.name == name:
            return entry.token
    names = ", ".join(entry.name for entry in tokens)
    raise ConfigError(f"{where}: no token named {name!r}; names there: {names}")


def _entry(line: str, number: int) -> ApiToken | str:
    """The token on `line`, or what is wrong with it (never the token itself)."""
    name, colon, token = line.partition(":")
    if not colon:
        name, token = f"token-{number}", line
    elif not _NAME_RE.fullmatch(name.strip()):
        return "the name before ':' is not 1 to 32 of A-Z a-z 0-9 . _ -"
    token = token.strip()
    if not _TOKEN_RE.fullmatch(token):
        return "the token has a character outside A-Z a-z 0-9 - . _ ~ + / (and trailing =)"
    if not MIN_TOKEN_CHARS <= len(token) <= _MAX_TOKEN_CHARS:
        return (
            f"the token has {len(token)} characters; allowed: {MIN_TOKEN_CHARS} to "
            f"{_MAX_TOKEN_CHARS} (too short to resist guessing, or not a token)"
        )
    return ApiToken(name.strip(), token, number)


def _clashes(entry: ApiToken, found: list[ApiToken]) -> list[str]:
    problems = []
    for other in found:
        if other.name == entry.name:
            problems.append(f"line {entry.line}: name {entry.name!r} is also on line {other.line}")
        if secrets.compare_digest(other.token, entry.token):
            problems.append(f"line {entry.line}: the same token as line {other.line}")
    return problems
