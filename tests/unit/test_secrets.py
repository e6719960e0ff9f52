"""Secret files: the token file's format, the modes that are refused, and keygen's safe writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ha_voice import keyfiles
from ha_voice.config import Config, read_accepted_keys, read_cluster_key
from ha_voice.errors import ConfigError
from ha_voice.keyfiles import PrivateBatch, read_private, write_private
from ha_voice.keygen import KeygenRequest, keygen
from ha_voice.tokens import MIN_TOKEN_CHARS, new_token, parse_tokens, pick_token, read_token_file

TOKEN_A = "a" * MIN_TOKEN_CHARS
TOKEN_B = "B-._~+/9" * 4 + "=="


@pytest.fixture
def no_umask() -> Iterator[None]:
    """The loosest umask: a file is only as private as the mode it is created with."""
    old = os.umask(0)
    yield
    os.umask(old)


def private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


# --- the token file ------------------------------------------------------------------------


def test_names_comments_and_blank_lines() -> None:
    text = f"# operators\n\nalice:{TOKEN_A}\n   {TOKEN_B}  \n  # old: gone\nbob : {TOKEN_A}x\n"
    tokens = parse_tokens(text, "f")
    assert [(t.name, t.token, t.line) for t in tokens] == [
        ("alice", TOKEN_A, 3),
        ("token-4", TOKEN_B, 4),
        ("bob", TOKEN_A + "x", 6),
    ]
    assert TOKEN_A not in repr(tokens)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("alice:" + "a" * (MIN_TOKEN_CHARS - 1), f"the token has {MIN_TOKEN_CHARS - 1} characters"),
        ("a" * 5, "the token has 5 characters"),
        ("alice:" + "a" * 513, "the token has 513 characters"),
        ("alice:" + "a" * 30 + " b", "the token has a character outside"),
        ("alice:" + "a" * 30 + '"', "the token has a character outside"),
        ("al ice:" + "a" * 30, "the name before ':'"),
        ("-x:" + "a" * 30, "the name before ':'"),
        ("n" * 33 + ":" + "a" * 30, "the name before ':'"),
        ("alice:", "the token has a character outside"),
    ],
)
def test_a_bad_line_is_named_without_its_token(line: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tokens(f"ok:{TOKEN_B}\n{line}\n", "api_token_file = '/t'")
    message = str(caught.value)
    assert "api_token_file = '/t': line 2: " + says in message
    secret = line.partition(":")[2] or line
    assert secret.strip() not in message or len(secret.strip()) < 6
    assert "allowed:" in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "holds no token"),
        ("# only a comment\n\n", "holds no token"),
        (f"a:{TOKEN_A}\na:{TOKEN_B}\n", "line 2: name 'a' is also on line 1"),
        (f"a:{TOKEN_A}\nb:{TOKEN_A}\n", "line 2: the same token as line 1"),
    ],
)
def test_empty_files_and_clashes_are_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_tokens(text, "f")


def test_pick_token_by_name_or_first() -> None:
    tokens = parse_tokens(f"a:{TOKEN_A}\nb:{TOKEN_B}\n", "f")
    assert pick_token(tokens, None, "f") == TOKEN_A
    assert pick_token(tokens, "b", "f") == TOKEN_B
    with pytest.raises(ConfigError, match="no token named 'c'; names there: a, b"):
        pick_token(tokens, "c", "f")


def test_new_tokens_are_long_random_and_valid() -> None:
    first, second = new_token(), new_token()
    assert first != second
    assert len(first) == 43
    assert parse_tokens(f"x:{first}", "f")[0].token == first


def test_a_missing_token_file_says_how_to_make_one(tmp_path: Path) -> None:
    path = tmp_path / "api.tokens"
    with pytest.raises(
        ConfigError, match=f"no such file; fix: ha-voice keygen --no-key --token-file {path}"
    ):
        read_token_file(path)


# --- modes: refused as ssh refuses an exposed key --------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666, 0o610, 0o601])
def test_a_secret_that_group_or_others_may_touch_is_refused(tmp_path: Path, mode: int) -> None:
    key_file = private(tmp_path / "cluster.key", b"k" * 32)
    token_file = private(tmp_path / "api.tokens", f"a:{TOKEN_A}\n".encode())
    accepted = private(tmp_path / "next.key", b"n" * 32)
    config = Config(cluster_key_file=key_file, cluster_key_accepted_file=accepted)
    for key, path, read in (
        ("cluster_key_file", key_file, lambda: read_cluster_key(config)),
        ("cluster_key_accepted_file", accepted, lambda: read_accepted_keys(config)),
        ("api_token_file", token_file, lambda: read_token_file(token_file)),
    ):
        path.chmod(mode)
        with pytest.raises(ConfigError) as caught:
            read()
        message = str(caught.value)
        assert f"{key} = '{path}' has mode {mode:04o}" in message
        assert f"fix: chmod 600 {path}" in message
        path.chmod(0o600)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    key_file = private(tmp_path / "cluster.key", b"k" * 32)
    key_file.chmod(mode)
    assert read_cluster_key(Config(cluster_key_file=key_file)) == b"k" * 32


def test_the_accepted_key_is_optional_and_checked_like_the_key(tmp_path: Path) -> None:
    assert read_accepted_keys(Config()) == ()
    short = private(tmp_path / "short.key", b"k" * 15)
    with pytest.raises(ConfigError, match=r"cluster_key_accepted_file = .*only 15 bytes"):
        read_accepted_keys(Config(cluster_key_accepted_file=short))


# --- writing secrets -----------------------------------------------------------------------


@pytest.mark.usefixtures("no_umask")
def test_new_secrets_are_0600_from_the_start_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    write_private(path, b"first")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_private(path, b"second")
    assert path.read_bytes() == b"first"
    path.chmod(0o644)
    write_private(path, b"second", force=True)
    assert (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) == (b"second", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.key"]  # no temporary left


def test_a_restrictive_umask_still_gives_the_owner_read_and_write(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        write_private(tmp_path / "k", b"x")
    finally:
        os.umask(old)
    assert read_private(tmp_path / "k", "k") == b"x"


# --- keygen --------------------------------------------------------------------------------


def test_keygen_writes_a_key_and_a_token_file_and_shows_the_token_once(tmp_path: Path) -> None:
    key_file, token_file = tmp_path / "cluster.key", tmp_path / "api.tokens"
    lines = keygen(KeygenRequest(key_file, token_file, "ops"))
    assert len(read_private(key_file, "k")) == 32
    (entry,) = read_token_file(token_file)
    assert entry.name == "ops"
    assert f"token ops: {entry.token}" in lines
    assert sum(entry.token in line for line in lines) == 1
    assert any(str(key_file) in line and "mode 0600" in line for line in lines)
    assert any(f'api_token_file = "{token_file}"' in line for line in lines)


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    key_file = tmp_path / "cluster.key"
    keygen(KeygenRequest(key_file, None))
    before = key_file.read_bytes()
    with pytest.raises(ConfigError, match="exists; fix: keep it, or replace it with --force"):
        keygen(KeygenRequest(key_file, None))
    assert key_file.read_bytes() == before
    keygen(KeygenRequest(key_file, None, force=True))
    assert key_file.read_bytes() != before


def test_keygen_adds_named_tokens(tmp_path: Path) -> None:
    token_file = tmp_path / "api.tokens"
    keygen(KeygenRequest(None, token_file, "admin"))
    keygen(KeygenRequest(None, token_file, "bob", add=True))
    assert [t.name for t in read_token_file(token_file)] == ["admin", "bob"]
    with pytest.raises(ConfigError, match="already holds a token named 'bob'"):
        keygen(KeygenRequest(None, token_file, "bob", add=True))
    with pytest.raises(ConfigError, match="token name 'b b'"):
        keygen(KeygenRequest(None, tmp_path / "other.tokens", "b b"))


def test_keygen_names_an_unknown_owner(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--owner 'no-such-user-here': no such user"):
        keygen(KeygenRequest(tmp_path / "k", None, owner="no-such-user-here"))
    assert not (tmp_path / "k").exists()


def test_keygen_adds_to_a_private_token_file_only_and_keeps_it_whole(tmp_path: Path) -> None:
    token_file = tmp_path / "api.tokens"
    keygen(KeygenRequest(None, token_file, "admin"))
    before = token_file.read_bytes()
    token_file.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        keygen(KeygenRequest(None, token_file, "bob", add=True))
    assert token_file.read_bytes() == before
    token_file.chmod(0o600)
    inode = token_file.stat().st_ino
    keygen(KeygenRequest(None, token_file, "bob", add=True))
    assert token_file.read_bytes().startswith(before)
    info = token_file.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, os.getuid())
    assert info.st_ino != inode  # a new file renamed over the old: never read half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.tokens"]


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    ("token_setup", "says"),
    [
        ("exists", "api.tokens exists; fix: keep it, or replace it with --force"),
        ("add-missing", "no such file"),
        ("add-exposed", "has mode 0644"),
        ("add-malformed", "line 1: the token has 5 characters"),
        ("no-directory", "does not exist; fix: create it first"),
    ],
)
def test_keygen_that_fails_on_the_token_file_writes_no_key(
    tmp_path: Path, token_setup: str, says: str
) -> None:
    key_file, token_file = tmp_path / "cluster.key", tmp_path / "api.tokens"
    add = token_setup.startswith("add")
    if token_setup == "exists":
        private(token_file, f"admin:{TOKEN_A}\n".encode())
    elif token_setup == "add-exposed":
        private(token_file, f"admin:{TOKEN_A}\n".encode()).chmod(0o644)
    elif token_setup == "add-malformed":
        private(token_file, b"x:short\n")
    elif token_setup == "no-directory":
        token_file = tmp_path / "absent" / "api.tokens"
    before = files(tmp_path)
    with pytest.raises(ConfigError, match=says):
        keygen(KeygenRequest(key_file, token_file, "bob", add=add))
    assert files(tmp_path) == before  # no key, no temporary file
    # So the same run, once the token file is dealt with, does not meet a key of its own.
    if token_setup == "exists":
        token_file.unlink()
        keygen(KeygenRequest(key_file, token_file))
        assert key_file.exists()


@pytest.mark.parametrize("failing", [1, 2])
def test_a_batch_that_cannot_put_a_file_in_place_takes_back_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    replaced = private(tmp_path / "replaced", b"old")
    created = tmp_path / "created"
    calls = {"n": 0}
    real_place = keyfiles._place

    def place(staged: keyfiles._Staged) -> Path | None:
        calls["n"] += 1
        if calls["n"] == failing:
            raise PermissionError(13, "Permission denied", str(staged.path))
        return real_place(staged)

    monkeypatch.setattr(keyfiles, "_place", place)
    with PrivateBatch() as batch:
        batch.stage(replaced, b"new", replace=True)
        batch.stage(created, b"fresh", replace=False)
        with pytest.raises(PermissionError):
            batch.commit()
    assert files(tmp_path) == {"replaced": b"old"}


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (KeygenRequest(None, None), "nothing to write (--no-key and --no-token together)"),
        (KeygenRequest(Path("cluster.key"), None), "--key-file 'cluster.key' is a relative path"),
        (KeygenRequest(None, Path("etc/api.tokens")), "--token-file 'etc/api.tokens' is a relat"),
        (KeygenRequest(Path("/x/k"), None, add=True), "--add adds a token, so not with --no-token"),
        (KeygenRequest(Path("/x/k"), Path("/x/k")), "are both /x/k"),
        (KeygenRequest(None, Path("/x/t"), "b b"), "token name 'b b'"),
    ],
)
def test_keygen_refuses_what_it_cannot_do_whole_before_writing(
    request_: KeygenRequest, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        keygen(request_)
    assert says in str(caught.value)
    assert "fix:" in str(caught.value) or "allowed:" in str(caught.value)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--no-key", "--no-token"], "nothing to write"),
        (["--no-token", "--key-file", "cluster.key"], "--key-file 'cluster.key' is a relative"),
    ],
)
def test_the_keygen_command_exits_2_having_written_nothing(
    tmp_path: Path, args: list[str], says: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HA_VOICE_")}
    env["HA_VOICE_CONFIG"] = str(tmp_path / "absent.toml")
    result = subprocess.run(
        [sys.executable, "-m", "ha_voice", "keygen", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result
    assert says in result.stderr
    assert list(tmp_path.iterdir()) == []
