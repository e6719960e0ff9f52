"""`dig` against mDNS from inside a namespace: an independent resolver for our records.

dig 9.18 cannot take a multicast answer (it comes from the responder's own address, which dig
drops), so a tiny relay in the same namespace forwards dig's query unchanged to 224.0.0.251:5353
and hands back the first answer. dig still builds the query and parses the reply.
"""

from __future__ import annotations

import re
import sys

from tests.integration.netns import Lan

__all__ = ["Dig"]

MDNS_RELAY = r"""
import socket

front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
front.bind(("127.0.0.1", 0))
print(front.getsockname()[1], flush=True)
while True:
    query, client = front.recvfrom(9000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as back:
        back.settimeout(1.5)
        back.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        back.sendto(query, ("224.0.0.251", 5353))
        try:
            answer, _ = back.recvfrom(9000)
        except TimeoutError:
            continue
    front.sendto(answer, client)
"""


class Dig:
    """dig run in one namespace against the relay that carries its queries over multicast."""

    def __init__(self, lan: Lan, index: int) -> None:
        self._lan, self._index = lan, index
        self._relay = lan[index].spawn([sys.executable, "-c", MDNS_RELAY])
        self._port = self._relay.wait_for(str.isdigit, timeout_s=5.0)

    def query(self, name: str, rrtype: str) -> list[list[str]]:
        """The answer and additional records dig prints, each split into its fields."""
        argv = ["dig", "-p", self._port, "@127.0.0.1", name, rrtype, "+time=2", "+tries=1"]
        argv += ["+norecurse", "+noall", "+answer", "+additional"]
        result = self._lan[self._index].run(argv, timeout_s=10)
        return [line.split(maxsplit=4) for line in result.stdout.splitlines() if line.strip()]

    def endpoint(self, cluster: str) -> tuple[str, int, str, dict[str, str]]:
        """(SRV target, SRV port, target's A address, TXT) of the cluster's endpoint."""
        name = f"{cluster}._ha-voice._tcp.local."
        records = self.query(name, "SRV")
        srv = [rdata.split() for _, _, _, rrtype, rdata in records if rrtype == "SRV"]
        assert srv, f"dig found no SRV for {name}: {records}"
        _, _, port, target = srv[0]
        addresses = [r[4] for r in records if r[3] == "A" and r[0] == target]
        texts = [r[4] for r in self.query(name, "TXT") if r[3] == "TXT"]
        assert texts, f"dig found no TXT for {name}"
        txt = dict(item.partition("=")[::2] for item in re.findall(r'"([^"]*)"', texts[0]))
        return target, int(port), addresses[0] if addresses else "", txt
