"""Every answer names the cluster and the other members' API URLs, so that a client that was
given one node's URL (the seed's `JetsonVoiceClient(jetson_url=...)`) can fail over to the
others when that node dies (client.py).

Invariants:
- `X-HA-Voice-Cluster` is the cluster's name (its mDNS endpoint is `<name>._ha-voice._tcp`);
  `X-HA-Voice-Members` lists the API URLs of the other voting members that this node has an
  address for, comma-separated, in node-id order; witnesses serve no commands and are left out.
- A member's URL is the address its cluster packets come from and the API port its heartbeats
  or mDNS record carry (else this node's own port: the cluster's nodes share one port unless
  told otherwise), in this node's scheme (all members serve TLS or none do).
- Read from the immutable `NodeView`: building the headers never waits.
- Imports nothing at run time: the client (which must start fast) takes the header names here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ha_voice.api.context import ApiContext

__all__ = ["CLUSTER_HEADER", "MEMBERS_HEADER", "MemberHeaders", "member_api_urls"]

CLUSTER_HEADER: Final = "X-HA-Voice-Cluster"
MEMBERS_HEADER: Final = "X-HA-Voice-Members"


def member_api_urls(ctx: ApiContext) -> dict[str, str]:
    """Node id -> API URL of every other voting member with a known address (no witnesses)."""
    view = ctx.node.view
    scheme = "https" if ctx.config.tls_cert_file is not None else "http"  # tls.api_scheme
    urls = {}
    for name in sorted(view.membership.voters):
        peer = view.peers.get(name)
        if name == view.node_id or name in view.membership.witnesses:
            continue
        if peer is None or peer.address is None:
            continue
        host = peer.address[0]
        host = f"[{host}]" if ":" in host else host
        urls[name] = f"{scheme}://{host}:{peer.api_port or ctx.config.port}"
    return urls


class MemberHeaders:
    """ASGI middleware: adds CLUSTER_HEADER and MEMBERS_HEADER to every HTTP answer."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_members(message: Message) -> None:
            if message["type"] == "http.response.start":
                members = ",".join(member_api_urls(self.ctx).values())
                added = [
                    (CLUSTER_HEADER.lower().encode(), self.ctx.config.cluster.encode()),
                    (MEMBERS_HEADER.lower().encode(), members.encode()),
                ]
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        await self.app(scope, receive, send_with_members)
