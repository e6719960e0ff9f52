"""The robot backend named by the `robot` key: the Go2, a simulator, or none."""

from __future__ import annotations

from ha_voice.robot.base import Robot
from ha_voice.robot.go2 import Go2Robot
from ha_voice.robot.sim import SimGo2
from ha_voice.robot.sim_server import SimRobotClient

__all__ = ["make_robot"]


def make_robot(spec: str, network_interface: str) -> Robot | None:
    """The backend for `spec` (go2, sim, sim://HOST:PORT, none); None for none."""
    if spec == "none":
        return None
    if spec == "go2":
        return Go2Robot(network_interface)
    if spec == "sim":
        return SimGo2()
    host, _, port = spec.removeprefix("sim://").rpartition(":")
    return SimRobotClient(host, int(port))
