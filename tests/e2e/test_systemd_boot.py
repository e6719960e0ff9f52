"""The shipped units booted for real: systemd as PID 1 of a `systemd-nspawn` container each.

Each container is a directory tree: the host's /usr bind-mounted read-only, an /etc of its own
(the `ha-voice` user and group, /etc/ha-voice as docs/operations.md makes it), and
/opt/ha-voice/venv, a virtual environment of this interpreter whose site-packages and source
tree are bind-mounted read-only. The unit files and drop-ins are installed by the docs' own commands
("Run") and are not changed; the one addition is /etc/default/ha-voice (the units'
EnvironmentFile=), which sets LD_LIBRARY_PATH for an interpreter built with a shared libpython
that it finds by an absolute path (pyenv's, under /root, which ProtectHome= hides). One
container runs `ha-voice.service` (jetson-1), the other `ha-voice-witness.service` (go2-pc), on
the host's network: the two are a quorum of three and jetson-1 leads. systemd's own view
(`systemctl show`) says the units reach active/running only after READY, with no capability,
seccomp, SCHED_RR 10 and /etc/ha-voice still 0750 (with the floating IP's drop-in: CAP_NET_ADMIN
and CAP_NET_RAW), that the watchdog is fed, that a SIGKILL is followed by a restart, that a
configuration error is not restarted, and that a stop ends with exit status 0. A third container
runs jetson-1 alone with the packaged Whisper model: its speech worker transcribes under every
restriction of the unit, at the default policy.

Needs root and `systemd-nspawn` (Debian's systemd-container); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ha_voice.keyfiles import write_private
from ha_voice.local_cluster import free_port
from ha_voice.tokens import new_token, token_line
from ha_voice.voice.models import PackagedModelMissing, packaged_model
from tests.doc_commands import block
from tests.speech_corpus import say, wav_bytes

ROOT = Path(__file__).resolve().parents[2]
VENV = "/opt/ha-voice/venv"
UID = GID = 990
KEY = os.urandom(32)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root"),
    pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="no systemd-nspawn"),
]

# The doc blocks run inside the containers, from the source tree (they name systemd/…).
RUN_HERE = ("install-unit", "install-witness-unit", "install-floating-ip", "install-jetson-gpu")


class Container:
    """A booted systemd-nspawn container over `root`, sharing the host's network."""

    def __init__(
        self, root: Path, name: str, api_port: int, binds: dict[str, str] | None = None
    ) -> None:
        self.root, self.name, self.api_port = root, name, api_port
        self.extra_binds = binds or {}
        self.leader = 0
        self.log_path = root.parent / f"{name}.console"
        self.process: subprocess.Popen[bytes] | None = None

    def boot(self) -> None:
        binds = {
            "/usr": "/usr",
            sys.base_prefix: "/opt/ha-voice/python",
            sysconfig.get_paths()["purelib"]: "/opt/ha-voice/site-packages",
            str(ROOT): "/opt/ha-voice/src",
            **self.extra_binds,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "systemd-nspawn",
                    f"--directory={self.root}",
                    f"--machine={self.name}",
                    *(f"--bind-ro={src}:{dst}" for src, dst in binds.items()),
                    # No machined or D-Bus on the host: stay in our own cgroup, unregistered.
                    "--register=no",
                    "--keep-unit",
                    # nspawn keeps CAP_NET_ADMIN only with a network of its own; the floating
                    # IP's drop-in grants it to the node, so the container must have it.
                    "--capability=CAP_NET_ADMIN",
                    "--console=pipe",
                    "--boot",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.leader = self._leader()
        deadline = time.monotonic() + 90
        state = ""
        while state not in {"running", "degraded"} and time.monotonic() < deadline:
            time.sleep(0.2)  # until systemd listens on its private socket, and then boots
            waited = self.run("systemctl", "is-system-running", "--wait", check=False)
            state = waited.stdout.strip()
        assert state in {"running", "degraded"}, (state, self.console())

    def _leader(self) -> int:
        """The container's PID 1, as the host sees it: the child of nspawn that is PID 1 of its
        own PID namespace. nspawn's first child is a short-lived "outer child" that forks the
        container's init and exits (init is then reparented to nspawn, its subreaper); on a
        loaded machine that outer child is still there when the children are first listed, and
        entering it fails, so only a child whose NSpid ends in 1 is taken."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.console()
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    nspid = next(x for x in status.splitlines() if x.startswith("NSpid:"))
                    if nspid.split()[-1] == "1" and len(nspid.split()) > 2:
                        return int(pid)
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no init process\n{self.console()}")

    def run(
        self, *argv: str, timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`argv` inside the container (all its namespaces), as root."""
        env = {"PATH": "/usr/sbin:/usr/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": ""}
        result = subprocess.run(
            ["nsenter", f"--target={self.leader}", "--all", "--wd=/", *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
        if check:
            assert result.returncode == 0, (argv, result.stdout, result.stderr)
        return result

    def show(self, unit: str) -> dict[str, str]:
        """`systemctl show` of `unit`, as a dict."""
        out = self.run("systemctl", "show", unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit, check=False).stdout

    def console(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def halt(self) -> None:
        """Shut the container down as a host shuts down (SIGTERM to nspawn), then make sure."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def make_root(root: Path, config: str) -> None:
    """A machine with ha-voice installed as docs/operations.md installs it, and `config`."""
    for top in ("usr", "etc", "var/lib", "run", "tmp", "proc", "sys", "dev", "root", "opt"):
        (root / top).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (root / link).symlink_to(f"usr/{link}")
    etc = root / "etc"
    shutil.copy("/etc/os-release", etc / "os-release")
    (etc / "machine-id").write_text("")
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        f"ha-voice:x:{UID}:{GID}::/var/lib/ha-voice:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    # `video` owns a Jetson's GPU nodes; the GPU drop-in joins it (Debian and L4T: gid 44).
    (etc / "group").write_text(f"root:x:0:\nvideo:x:44:\nha-voice:x:{GID}:\nnogroup:x:65534:\n")
    (etc / "systemd" / "system").mkdir(parents=True)
    # /etc/ha-voice: root:ha-voice 0750; the key the service user's, 0600 (operations.md).
    conf = etc / "ha-voice"
    conf.mkdir(mode=0o750)
    os.chown(conf, 0, GID)
    conf.chmod(0o750)
    (conf / "config.toml").write_text(config)
    write_private(conf / "cluster.key", KEY)
    os.chown(conf / "cluster.key", UID, GID)
    make_venv(root / VENV.lstrip("/"))


def make_venv(venv: Path) -> None:
    """/opt/ha-voice/venv: this interpreter (bound at /opt/ha-voice/python), this interpreter's
    packages and this source tree, with the `ha-voice` script pip would write."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (venv / "bin").mkdir(parents=True)
    site = venv / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(
        "home = /opt/ha-voice/python/bin\ninclude-system-site-packages = false\n"
    )
    (venv / "bin" / "python").symlink_to(f"/opt/ha-voice/python/bin/{version}")
    (site / "ha_voice_under_test.pth").write_text(
        "/opt/ha-voice/src\n/opt/ha-voice/site-packages\n"
    )
    script = venv / "bin" / "ha-voice"
    # As pip writes it: the guard matters, since a speech worker (multiprocessing's spawn)
    # imports the main module again.
    script.write_text(
        f"#!{VENV}/bin/python\nimport sys\nfrom ha_voice.cli import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    script.chmod(0o755)
    # An interpreter built with a shared libpython finds it by an absolute RUNPATH; the
    # environment file (EnvironmentFile=-/etc/default/ha-voice) says where it is bound.
    (venv.parents[2] / "etc" / "default").mkdir(parents=True, exist_ok=True)
    (venv.parents[2] / "etc" / "default" / "ha-voice").write_text(
        "LD_LIBRARY_PATH=/opt/ha-voice/python/lib\n"
    )


def config(node_id: str, api: int, udp: int, peers: list[str], extra: str = "") -> str:
    listed = ", ".join(f'"{p}"' for p in peers)
    return (
        f'node_id = "{node_id}"\ncluster = "nspawn-{os.getpid()}"\npeers = [{listed}]\n'
        'cluster_key_file = "/etc/ha-voice/cluster.key"\nstate_dir = "/var/lib/ha-voice"\n'
        f"stt_enabled = false\nport = {api}\ncluster_port = {udp}\n"
        # The containers share the host's network: no fixed port (Wyoming's 10300) on it.
        f"wyoming_port = {free_port()}\n{extra}"
    )


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[dict[str, Container]]:
    """jetson-1 (ha-voice.service) and go2-pc (ha-voice-witness.service), booted, their units
    not installed yet; jetson-2 is configured and absent."""
    names = {"j1": "jetson-1", "j2": "jetson-2", "w": "go2-pc"}
    api = {name: free_port() for name in names}
    udp = {name: free_port(socket.SOCK_DGRAM) for name in names}
    peer = {name: f"{node}@127.0.0.1:{udp[name]}" for name, node in names.items()}
    configs = {
        "j1": config("jetson-1", api["j1"], udp["j1"], [peer["j2"]], f'witness = "{peer["w"]}"\n'),
        "w": config("go2-pc", api["w"], udp["w"], [peer["j1"], peer["j2"]]),
    }
    containers: dict[str, Container] = {}
    try:
        for name, text in configs.items():
            make_root(tmp_path / name, text)
            containers[name] = Container(tmp_path / name, f"hv-{name}-{os.getpid()}", api[name])
            containers[name].boot()
        yield containers
    finally:
        for container in containers.values():
            container.halt()


def health(container: Container) -> dict[str, object] | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{container.api_port}/health", timeout=1)
    except httpx.HTTPError:
        return None
    return dict(answer.json())


def wait_until(what: str, predicate: Callable[[], object], timeout_s: float = 60) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


def process_status(container: Container, pid: str) -> dict[str, str]:
    text = container.run("cat", f"/proc/{pid}/status").stdout
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def install(
    container: Container, name: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The docs' block `name`, run inside `container` from the source tree (no sudo: root)."""
    script = f"cd /opt/ha-voice/src\n{block(name).replace('sudo ', '')}"
    result = container.run("bash", "-euo", "pipefail", "-c", script, timeout_s=120, check=False)
    if check:  # a unit that did not start: say why, from its journal
        units = " ".join(f"-u {u}" for u in ("ha-voice", "ha-voice-witness"))
        why = container.run("bash", "-c", f"journalctl --no-pager -n 60 {units}", check=False)
        assert result.returncode == 0, (name, result.stdout, result.stderr, why.stdout)
    return result


def test_the_units_start_restart_and_stop_under_systemd(machines: dict[str, Container]) -> None:
    node, witness = machines["j1"], machines["w"]
    install(witness, "install-witness-unit")
    install(node, "install-unit")  # enable --now: returns once READY (Type=notify)
    for box, unit in ((node, "ha-voice"), (witness, "ha-voice-witness")):
        shown = box.show(unit)
        print(unit, {k: shown[k] for k in ("ActiveState", "SubState", "StatusText", "NRestarts")})
        assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), box.journal(unit)
        assert shown["UnitFileState"] == "enabled"
        assert shown["NRestarts"] == "0"
        ready_s = (
            int(shown["ActiveEnterTimestampMonotonic"])
            - int(shown["ExecMainStartTimestampMonotonic"])
        ) / 1e6
        stat = box.run("cat", f"/proc/{shown['MainPID']}/stat").stdout.rsplit(")", 1)[1].split()
        cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        print(f"{unit}: from start to READY in {ready_s:.2f} s, {cpu_s:.2f} s of CPU by now")
        # What the unit promises is what the process got.
        status = process_status(box, shown["MainPID"])
        assert status["CapEff"] == status["CapBnd"] == "0000000000000000"
        assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
        policy = box.run("ps", "-o", "cls=,rtprio=", "-p", shown["MainPID"]).stdout.split()
        assert policy == ["RR", "10"]
        # systemd keeps /etc/ha-voice as the docs make it: root:ha-voice 0750.
        mode = box.run("stat", "-c", "%a %U %G", "/etc/ha-voice", "/var/lib/ha-voice").stdout
        assert mode.split("\n")[:2] == ["750 root ha-voice", "700 ha-voice ha-voice"]
    wait_until("jetson-1 leads", lambda: (health(node) or {}).get("role") == "primary")
    assert (health(witness) or {}).get("role") == "witness"
    # mDNS (zeroconf), the interface list, sd_notify: nothing the unit forbids was needed.
    for box, unit in ((node, "ha-voice"), (witness, "ha-voice-witness")):
        journal = box.journal(unit)
        assert "Traceback" not in journal, journal
        assert "not permitted" not in journal, journal

    # The drop-ins as the docs install them: a floating IP's two capabilities, the GPU's devices.
    install(node, "install-floating-ip")
    status = process_status(node, node.show("ha-voice")["MainPID"])
    assert status["CapEff"] == status["CapBnd"] == "0000000000003000"  # CAP_NET_ADMIN, _RAW
    install(node, "install-jetson-gpu")
    shown = node.show("ha-voice")
    assert (shown["ActiveState"], shown["PrivateDevices"], shown["DevicePolicy"]) == (
        "active",
        "no",
        "closed",
    )
    # With PrivateUsers=yes too, the process is in `video` (as seen from outside its user
    # namespace, where the kernel checks the device nodes' group).
    groups = process_status(node, shown["MainPID"])["Groups"].split()
    assert "44" in groups, groups

    # The watchdog is fed (every WatchdogSec / 2).
    first = node.show("ha-voice")["WatchdogTimestampMonotonic"]
    wait_until(
        "a watchdog ping",
        lambda: node.show("ha-voice")["WatchdogTimestampMonotonic"] != first,
        timeout_s=15,
    )

    # SIGKILL: systemd starts it again after RestartSec, and it is READY again.
    old_pid = node.show("ha-voice")["MainPID"]
    killed = time.monotonic()
    node.run("systemctl", "kill", "--signal=SIGKILL", "ha-voice")

    def back() -> bool:
        shown = node.show("ha-voice")
        return shown["NRestarts"] == "1" and shown["ActiveState"] == "active"

    wait_until("a restart after SIGKILL", back, timeout_s=60)
    print(f"SIGKILL to active again: {time.monotonic() - killed:.1f} s")
    assert node.show("ha-voice")["MainPID"] != old_pid
    wait_until("jetson-1 leads again", lambda: (health(node) or {}).get("role") == "primary")

    # A stop: handed over (or resigned), exit status 0, well inside TimeoutStopSec.
    for box, unit in ((node, "ha-voice"), (witness, "ha-voice-witness")):
        started = time.monotonic()
        box.run("systemctl", "stop", unit)
        print(f"{unit}: stopped in {time.monotonic() - started:.1f} s")
        shown = box.show(unit)
        assert (shown["ActiveState"], shown["Result"]) == ("inactive", "success")
        assert shown["ExecMainStatus"] == "0", box.journal(unit)


def test_a_configuration_error_is_not_restarted(machines: dict[str, Container]) -> None:
    node = machines["j1"]
    config = node.root / "etc" / "ha-voice" / "config.toml"
    config.write_text(config.read_text() + "heartbeat_interval_s = -1\n")
    failed = install(node, "install-unit", check=False)
    assert failed.returncode != 0
    shown = node.show("ha-voice")
    exit_s = (
        int(shown["ExecMainExitTimestampMonotonic"]) - int(shown["ExecMainStartTimestampMonotonic"])
    ) / 1e6
    print(f"a configuration error ends the start in {exit_s:.2f} s")
    time.sleep(6)  # past RestartSec
    shown = node.show("ha-voice")
    assert (shown["ActiveState"], shown["Result"], shown["ExecMainStatus"]) == (
        "failed",
        "exit-code",
        "2",
    )
    assert shown["NRestarts"] == "0"
    assert "heartbeat_interval_s" in node.journal("ha-voice")


def test_speech_workers_transcribe_under_the_unit_at_the_default_policy(tmp_path: Path) -> None:
    """The packaged Whisper base model, bound read-only into jetson-1 (alone: speech does not
    wait for a quorum), transcribes under every restriction of the unit."""
    try:
        model = packaged_model("base")
    except PackagedModelMissing as exc:
        pytest.skip(str(exc))
    api = free_port()
    token = new_token()
    extra = (
        'whisper_model = "/opt/ha-voice/model"\nstt_workers = 1\n'
        'api_token_file = "/etc/ha-voice/api.tokens"\n'
    )
    text = config("jetson-1", api, free_port(socket.SOCK_DGRAM), ["jetson-2", "go2-pc"], extra)
    make_root(tmp_path / "j1", text.replace("stt_enabled = false\n", ""))
    tokens = tmp_path / "j1" / "etc" / "ha-voice" / "api.tokens"
    write_private(tokens, token_line("test", token).encode())
    os.chown(tokens, UID, GID)
    # A copy outside the caller's home (ProtectHome= hides the model cache there), readable by
    # the service user whatever the umask it was assembled under.
    readable = tmp_path / "model"
    shutil.copytree(model, readable)
    for path in readable.iterdir():
        path.chmod(0o644)
    node = Container(
        tmp_path / "j1", f"hv-speech-{os.getpid()}", api, {str(readable): "/opt/ha-voice/model"}
    )
    try:
        node.boot()
        install(node, "install-unit")

        def speech_ready() -> bool:
            speech = (health(node) or {}).get("speech")
            return isinstance(speech, dict) and bool(speech.get("ready"))

        try:
            wait_until("speech ready", speech_ready, timeout_s=180)
        except AssertionError:
            raise AssertionError((health(node), node.journal("ha-voice")[-3000:])) from None
        main_pid = node.show("ha-voice")["MainPID"]
        # The worker left SCHED_RR and runs at niceness 10; multiprocessing's resource tracker,
        # which only waits on a pipe, keeps the node's policy.
        children = node.run("ps", "-o", "cls=,ni=,args=", "--ppid", main_pid).stdout
        workers = [line.split()[:2] for line in children.splitlines() if "spawn_main" in line]
        assert workers == [["TS", "10"]], children
        wav = wav_bytes(say("sta op", "nl"))
        answer = httpx.post(
            f"http://127.0.0.1:{api}/v1/audio/transcriptions",
            files={"file": ("speech.wav", wav, "audio/wav")},
            data={"model": "whisper-1", "language": "nl"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert "op" in answer.json()["text"].lower(), answer.json()
        assert node.show("ha-voice")["NRestarts"] == "0"
    finally:
        node.halt()
