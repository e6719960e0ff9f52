"""The secret-file commands of docs/operations.md, run as written (tests/doc_commands.py says the
one change: /etc/ha-voice and its owner are a temporary directory and this user), and what they
leave is what the daemon accepts."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ha_voice.config import Config, read_accepted_keys, read_cluster_key
from ha_voice.tokens import read_token_file
from tests.doc_commands import OPERATIONS, block, blocks, run, system_replacements
from tests.e2e.test_netns_drill import RUN_HERE as DRILL_RUN_HERE
from tests.e2e.test_netns_walkthrough import RUN_HERE as WALKTHROUGH_RUN_HERE
from tests.e2e.test_systemd_boot import RUN_HERE as SYSTEMD_RUN_HERE

# Every marked block, and the test that runs it.
RUN_BY = {
    "keygen": "test_docs_commands.py",
    "add-token": "test_docs_commands.py",
    "new-key": "test_docs_commands.py",
    "tls-certificates": "test_tls.py",
    "speech-model": "test_docs_speech.py",
    "prometheus-check": "test_prometheus_rules.py",
    **dict.fromkeys(WALKTHROUGH_RUN_HERE, "../e2e/test_netns_walkthrough.py"),
    **dict.fromkeys(SYSTEMD_RUN_HERE, "../e2e/test_systemd_boot.py"),
    **dict.fromkeys(DRILL_RUN_HERE, "../e2e/test_netns_drill.py"),
}
# The sections whose every shell block must be marked (and so run).
SECTIONS = ("## Secret files", "## Who may command the robot", "## Run")


def test_every_shell_block_of_the_secret_sections_is_run_by_a_test() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    for heading in SECTIONS:
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        fences = re.findall(r"^[ \t]*```sh$", section, re.M)
        marks = re.findall(r"^[ \t]*<!-- tested: [a-z0-9-]+ -->\n[ \t]*```sh$", section, re.M)
        assert len(fences) == len(marks), heading
    assert set(blocks()) == set(RUN_BY)
    here = Path(__file__).parent
    for name, test_file in RUN_BY.items():
        assert f'"{name}"' in (here / test_file).read_text(), (name, test_file)


def test_the_documented_secrets_are_private_and_accepted(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "ha-voice"
    etc.mkdir(parents=True)
    made = run(block("keygen"), tmp_path, system_replacements(etc))
    key_file, token_file = etc / "cluster.key", etc / "api.tokens"
    for path in (key_file, token_file):
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600, path
        assert info.st_uid == os.getuid()
    (admin,) = read_token_file(token_file)
    assert admin.name == "admin"
    assert made.stdout.count(admin.token) == 1  # printed once
    assert str(key_file) in made.stdout
    run(block("add-token"), tmp_path, system_replacements(etc))
    assert [t.name for t in read_token_file(token_file)] == ["admin", "bob"]
    run(block("new-key"), tmp_path, system_replacements(etc))
    new_key = etc / "cluster.key.new"
    config = Config(cluster_key_file=key_file, cluster_key_accepted_file=new_key)
    assert len(read_cluster_key(config)) == 32
    assert read_accepted_keys(config) == (new_key.read_bytes(),)
    assert new_key.read_bytes() != key_file.read_bytes()
    before = key_file.read_bytes()
    run(f"! {block('keygen').strip()}", tmp_path, system_replacements(etc))  # refused: exists
    assert key_file.read_bytes() == before
