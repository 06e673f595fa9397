"""Every service's OpenAPI document declares the errors it really answers, once for all routes
(shared.api.declare_problem_responses): RFC 9457 problem documents with the Problem schema."""

from __future__ import annotations

import importlib
import json

import pytest

from shared.service import create_app
from shared.settings import SERVICES

PROBLEM = {"$ref": "#/components/schemas/Problem"}


@pytest.mark.parametrize("service", SERVICES)
def test_every_authenticated_operation_declares_the_problem_responses(service: str) -> None:
    doc = create_app(importlib.import_module(f"{service}.service").SERVICE).openapi()
    assert doc["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status", "detail"]
    assert "HTTPValidationError" not in json.dumps(doc)  # FastAPI's 422 shape, never sent
    authenticated = 0
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if operation.get("security"):
                authenticated += 1
                for code in ("401", "403", "404", "409", "413", "422", "429"):
                    content = responses[code]["content"]
                    assert content == {"application/problem+json": {"schema": PROBLEM}}, (method, path, code)
                assert "Retry-After" in responses["429"]["headers"]
            if operation.get("requestBody"):
                assert responses["400"]["content"]["application/problem+json"]["schema"] == PROBLEM
            if "422" in responses:
                assert list(responses["422"]["content"]) == ["application/problem+json"]
    assert authenticated >= 5
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
