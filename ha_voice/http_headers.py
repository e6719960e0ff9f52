"""Names of the headers a node adds to every answer and the client reads: one place for both,
importing nothing, so that the client (which must start fast) does not load the API package."""

from __future__ import annotations

from typing import Final

__all__ = ["CLUSTER_HEADER", "MEMBERS_HEADER"]

# The cluster's name (its mDNS endpoint is `<name>._ha-voice._tcp`).
CLUSTER_HEADER: Final = "X-HA-Voice-Cluster"
# The other voting members' API URLs, comma-separated, in node-id order (api/members.py).
MEMBERS_HEADER: Final = "X-HA-Voice-Members"
