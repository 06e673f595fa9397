"""What every service's request schemas share."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, model_validator

#: the instants and days a request may name: wide enough for any member's life and any plan, narrow enough
#: that the programme's date arithmetic (windows, 24-month expiries, reviews) and PostgreSQL never overflow
EARLIEST = date(1900, 1, 1)
LATEST = date(2199, 12, 31)
#: what a PostgreSQL bigint holds
INT64_MAX = 2**63 - 1


def in_range(value: Any) -> Any:
    """``value`` if it is a date or instant between 1900 and 2199 and an integer a bigint holds; else ValueError."""
    if isinstance(value, date):
        day = value.date() if isinstance(value, datetime) else value
        if isinstance(value, datetime) and value.tzinfo is not None:
            try:
                day = value.astimezone(UTC).date()
            except OverflowError as exc:
                raise ValueError(f"must be between {EARLIEST} and {LATEST}") from exc
        if not EARLIEST <= day <= LATEST:
            raise ValueError(f"must be between {EARLIEST} and {LATEST}")
    elif isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX <= value <= INT64_MAX:
        raise ValueError(f"must be between {-INT64_MAX} and {INT64_MAX}")
    return value


#: an instant in a query or path parameter (with a UTC offset, within :data:`EARLIEST`..:data:`LATEST`)
Instant = Annotated[AwareDatetime, AfterValidator(in_range)]


class Strict(BaseModel):
    """A request body: unknown fields are an error (a typo must not be ignored), strings are trimmed, and every
    date, instant and integer field is within what the code and the database can hold (:func:`in_range`)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @model_validator(mode="after")
    def _storable(self) -> Strict:
        for name, value in self:
            for v in value if isinstance(value, list | tuple | set) else (value,):
                try:
                    in_range(v)
                except ValueError as exc:
                    raise ValueError(f"{name} {exc}") from None
        return self
