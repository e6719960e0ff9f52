"""/docs and /redoc work on a network without internet: every file they load comes from the node.

A real node (uvicorn, LocalCluster). The pages are read as a browser would: each script,
stylesheet, icon and the OpenAPI document they name is fetched from the node and must answer
200; no page names another host (a CDN left the page blank on a robot's network).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from ha_voice.local_cluster import LocalCluster, LocalNode

_REFERENCE = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url: ["']([^"']+)["']""")
_OTHER_HOST = re.compile(r"(?:https?:)?//[\w.-]+", re.I)
_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with LocalCluster(1) as cluster:
        cluster.start()
        only = cluster.nodes["n1"]
        deadline = time.monotonic() + 30.0
        while only.get("/health") is None:
            assert time.monotonic() < deadline, "the node never answered"
            time.sleep(0.1)
        yield only


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_page_names_no_other_host(node: LocalNode, page: str) -> None:
    response = node.get(page, timeout_s=10.0)
    assert response is not None
    assert response.status_code == 200
    assert _OTHER_HOST.findall(response.text) == []


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_file_the_page_loads_is_served_by_the_node(node: LocalNode, page: str) -> None:
    response = node.get(page, timeout_s=10.0)
    assert response is not None
    references = [a or b for a, b in _REFERENCE.findall(response.text)]
    assert "/openapi.json" in references
    assert any(ref.endswith(".js") for ref in references)  # the page's UI
    for reference in references:
        assert reference.startswith("/"), reference
        asset = node.get(reference, timeout_s=10.0)
        assert asset is not None
        assert asset.status_code == 200, reference
        assert asset.content, reference
        suffix = reference[reference.rfind(".") :]
        assert _TYPES[suffix] in asset.headers["content-type"], reference


def test_swagger_ui_asks_no_online_validator(node: LocalNode) -> None:
    # Left on, Swagger UI shows a badge fetched from validator.swagger.io.
    response = node.get("/docs", timeout_s=10.0)
    assert response is not None
    assert '"validatorUrl": null' in response.text
