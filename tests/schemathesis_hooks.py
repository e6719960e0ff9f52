"""schemathesis hooks for ha-voice (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks).

The one rule the OpenAPI schema cannot state: a request that carries its idempotency key both
in the `Idempotency-Key` header and in the body's `idempotency_key` must carry the same key
(else 400, which the schema documents). Cases that send two different keys are not generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """Keep a case unless its header and body keys are both present and differ."""
    headers = case.headers or {}
    header = next((v for k, v in headers.items() if k.lower() == "idempotency-key"), None)
    body = case.body if isinstance(case.body, dict) else {}
    return header is None or "idempotency_key" not in body or body["idempotency_key"] == header
