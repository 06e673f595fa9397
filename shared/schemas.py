"""What every service's request schemas share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A request body: unknown fields are an error (a typo must not be ignored), strings are trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
