"""Request and response bodies of the notify API (not tables, not domain objects)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from shared.schemas import Strict

HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


class NotificationView(BaseModel):
    notification_id: str
    kind: str
    channel: str
    status: Literal["pending", "sent", "failed"]
    attempts: int
    created_at: datetime
    title: str
    locale: str
    sent_at: datetime | None
    last_error: str | None
    #: when a pending notification goes out (the end of quiet hours, or a retry); null once sent or failed
    next_attempt_at: datetime | None


class NotificationList(BaseModel):
    items: list[NotificationView]


class QuietHoursIn(Strict):
    start: str = Field(pattern=HHMM, examples=["22:00"])
    end: str = Field(pattern=HHMM, examples=["08:00"])

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHoursIn:
        if self.start == self.end:
            raise ValueError("quiet_hours start and end must differ (send null for no quiet hours)")
        return self


class PreferencesRequest(Strict):
    """A full replacement. Omitting quiet_hours means the default 22:00-08:00; null means none."""

    channels: list[Literal["sms", "email", "webhook"]] = Field(max_length=3)
    quiet_hours: QuietHoursIn | None = QuietHoursIn(start="22:00", end="08:00")
    locale: Literal["zh-CN", "en"]

    @model_validator(mode="after")
    def _no_repeats(self) -> PreferencesRequest:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must not repeat")
        return self


class PreferencesView(BaseModel):
    member_id: str
    channels: list[str]
    quiet_hours: QuietHoursIn | None
    locale: str
