"""Who may open one more HTTP connection: a share per client address, a pool for members.

Invariants:
- A client address holds at most `per_client` connections, and all clients together at most
  `max_connections`: one client can never take the whole pool.
- Members (the cluster's other nodes, recognised by the addresses they are heard from) have a
  pool of their own of `member_connections`, outside the clients' pool: no number of clients
  can keep a backup from forwarding a command to the primary.
- A connection is counted from accept() until it is closed, its TLS handshake included, and is
  released exactly once. Pure bookkeeping: no clock, no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

__all__ = ["Admission", "Refusal", "Ticket"]


@dataclass(frozen=True)
class Ticket:
    """One admitted connection: whose share it counts against."""

    host: str
    member: bool


@dataclass(frozen=True)
class Refusal:
    """Why a connection was not admitted: a metric `reason` and the answer's one line."""

    reason: str
    error: str


class Admission:
    """The open connections by client address; `admit` one more or say why not."""

    def __init__(
        self,
        max_connections: int,
        per_client: int,
        member_connections: int,
        node: str = "this node",
    ) -> None:
        self.node = node  # who refuses, in the answer: it may reach a client through a backup
        self.max_connections = max_connections
        self.per_client = min(per_client, max_connections)
        self.member_connections = member_connections
        self._by_host: Counter[str] = Counter()
        self.clients = 0  # connections in the clients' pool
        self.members = 0  # connections in the members' pool

    def admit(self, host: str, member: bool) -> Ticket | Refusal:
        """A ticket for one more connection from `host`, or the limit it would pass."""
        if member:
            if self.members >= self.member_connections:
                return Refusal(
                    "member_cap",
                    f"{self.node} already holds {self.members} connections from cluster members",
                )
            self.members += 1
            return Ticket(host, member=True)
        held = self._by_host[host]
        if held >= self.per_client and self.per_client < self.max_connections:
            return Refusal(
                "client_share",
                f"{host} already holds {held} connections to {self.node} "
                "(api_max_connections_per_client); reuse them or close some",
            )
        if self.clients >= self.max_connections:
            return Refusal(
                "connection_cap",
                f"{self.node} already holds {self.clients} connections (api_max_connections)",
            )
        self._by_host[host] = held + 1
        self.clients += 1
        return Ticket(host, member=False)

    def release(self, ticket: Ticket) -> None:
        """Give back what `ticket` took (once per ticket)."""
        if ticket.member:
            self.members -= 1
            return
        self.clients -= 1
        left = self._by_host[ticket.host] - 1
        if left > 0:
            self._by_host[ticket.host] = left
        else:
            del self._by_host[ticket.host]

    def held_by(self, host: str) -> int:
        """Connections `host` holds in the clients' pool."""
        return self._by_host.get(host, 0)
