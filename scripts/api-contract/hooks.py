"""Schemathesis hooks of scripts/api-contract.sh.

Every request that carries a valid `Idempotency-Key` gets a fresh one: a key names one
request, and a generated key repeated for another request is (rightly) answered
`422 idempotency_key_reused`, which would hide the route's own answer. Keys generated to be
invalid (negative cases) are sent as generated.
"""

import uuid

import schemathesis
from schemathesis.core.parameters import ParameterLocation


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers
    if not headers or "Idempotency-Key" not in headers:
        return
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return
    headers["Idempotency-Key"] = str(uuid.uuid4())


def _integers_as_integers(value):
    # JSON Schema counts 2.0 as an integer; the API (serde) takes integers written as integers.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integers_as_integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers_as_integers(v) for v in value]
    return value


@schemathesis.hook
def map_body(ctx, body):
    return _integers_as_integers(body)
