"""Fuzzing every service's OpenAPI document with schemathesis, against the running platform.

For each operation of each service, schemathesis generates requests that fit the document (positive)
and requests that do not (negative), sends them with a valid key of a chain of their own, and checks
every response: never a 5xx, a status the document declares, its media type, and a body that matches
the declared schema (the error responses are declared once, in shared.api.declare_problem_responses).

Bounded: ``MEMBERSHIP_FUZZ_EXAMPLES`` examples per operation and mode (default 5), so the five
services take a few minutes together. The fuzz chain is its own (an ``ops`` key, not ``platform``),
so policy changes, adjustments and job runs the fuzzer makes touch no other test's data. Positive
cases of an operation on ``{member_id}`` go to a real member of that chain (else nearly every one
would stop at a 404); negative cases keep what schemathesis generates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack.stack import Stack
from shared.settings import SERVICES
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("MEMBERSHIP_FUZZ_EXAMPLES", "5"))
FUZZ_CHAIN = "fuzz-chain"

#: (service, METHOD, path) not fuzzed here, each with the reason. Cases that belong to the input-abuse
#: work (NUL bytes, extreme dates, PATCH nulls, oversized bodies; branch sec-abuse) are excluded by
#: what they send, in ``belongs_to_sec_abuse`` below, not by operation.
EXCLUDED_OPERATIONS: dict[tuple[str, str, str], str] = {}


def belongs_to_sec_abuse(case: Any) -> str | None:
    """The inputs another engineer hardened the services against (branch sec-abuse: NUL bytes, extreme
    dates, PATCH nulls, oversized bodies). Before it landed, ``PATCH /v1/members/{id}`` with a null
    member answered 500 and was filtered out here; since the merge nothing is: add a case here (with
    the reason) only for a finding that belongs to work in progress elsewhere."""
    return None


def not_a_server_error(response: Any) -> str | None:
    if response.status_code < 500:
        return None
    return f"{response.status_code} {response.content[:300].decode(errors='replace')}"


@pytest.fixture(scope="module")
def fuzz_key(stack: Stack) -> str:
    """An ops key of a chain of the fuzzer's own (chains are isolated; SPEC §5)."""
    from shared.db import make_engine
    from shared.platform import add_api_key, upsert_chain

    async def go() -> str:
        engine = make_engine(stack.settings(), pooled=False)
        try:
            await upsert_chain(engine, FUZZ_CHAIN, "Fuzz Clinics")
            return await add_api_key(engine, FUZZ_CHAIN, ["ops"], name=f"fuzz-{uuid.uuid4().hex[:6]}")
        finally:
            await engine.dispose()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def fuzz_member(stack: Stack, fuzz_key: str) -> str:
    """A member of the fuzz chain, known to every service."""
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    body = {
        "phone": "139" + str(uuid.uuid4().int)[:8],
        "name": "模糊测试",
        "birthday": "1990-06-15",
        "home_clinic_id": "clinic-1",
        "source": "walk_in",
        "consents": {"marketing": True, "sms": True, "email": False},
    }
    r = httpx.post(stack.url("enrollment") + "/v1/members", json=body, headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    member_id: str = r.json()["member_id"]
    probes = {"points": "/points", "tiering": "/tier", "benefits": "/benefits", "notify": "/notifications"}
    for service, suffix in probes.items():
        url = f"{stack.url(service)}/v1/members/{member_id}{suffix}"
        eventually(lambda u=url: httpx.get(u, headers=headers, timeout=10).status_code == 200, timeout=60)
    return member_id


def fuzz_operation(
    operation: Any, base_url: str, key: str, mode: GenerationMode, member_id: str | None = None
) -> list[str]:
    """Up to EXAMPLES cases of one operation in one mode; the failures, one line each."""
    failures: list[str] = []
    skipped: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    fixed = {}
    if member_id and mode is GenerationMode.POSITIVE and "{member_id}" in operation.path:
        fixed["member_id"] = member_id

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases in every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        why = belongs_to_sec_abuse(case)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            return
        case.headers = {**(case.headers or {}), **headers}
        where = f"{operation.method.upper()} {operation.path} ({mode.value})"
        try:
            response = case.call(base_url=base_url, timeout=30)
            server_error = not_a_server_error(response)
            if server_error:
                failures.append(f"{where}: {server_error}\n    {case.as_curl_command(headers=headers)}")
                return
            case.validate_response(response, checks=checks, headers=headers)
        except (FailureGroup, Exception) as exc:  # FailureGroup (a BaseExceptionGroup): it does not match
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            failures.append(f"{where}: {' | '.join(lines[:8])}")

    with contextlib.suppress(Unsatisfiable):  # no negative case exists for an operation without inputs
        run()
    return failures


@pytest.mark.parametrize("service", SERVICES)
def test_fuzzing_the_openapi_document_finds_no_5xx_and_no_undocumented_response(
    service: str, stack: Stack, fuzz_key: str, fuzz_member: str
) -> None:
    base_url = stack.url(service)
    document = httpx.get(base_url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    fuzzed = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (service, operation.method.upper(), operation.path) in EXCLUDED_OPERATIONS:
            continue
        fuzzed += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += fuzz_operation(operation, base_url, fuzz_key, mode, fuzz_member)
    assert fuzzed >= 10
    assert not failures, f"{len(failures)} failing case(s):\n" + "\n".join(failures[:40])
