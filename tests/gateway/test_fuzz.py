"""A bounded schemathesis run over the gateway's own OpenAPI: no input makes it answer 5xx.

Every operation gets generated requests (valid and invalid, from the schema) against a real
gateway with a fake worker that answers at once; the check is schemathesis's
``not_a_server_error``. ``FUZZ_EXAMPLES`` (per operation) raises the bound for a longer run.
"""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.gateway.conftest import running_gateway

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))


def test_no_request_makes_the_gateway_fail(redis_server: str) -> None:
    with running_gateway(redis_server, max_wait_s=1.0, default_wait_s=0.5) as gateway:
        gateway.worker()
        schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 8
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                response = case.call(timeout=10)
                case.validate_response(response, checks=[not_a_server_error])

            check()
