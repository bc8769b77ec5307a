"""A stored Responses API response as the code handles it, apart from the table it is kept in:
the gateway builds these on its request path, where SQLAlchemy is not imported yet (the store
opens in the background; see `services`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response_id: str
    key_id: str | None
    team_id: str | None
    model_group: str | None
    deployment_id: str
    native: bool
    status: str
    body: str | None  # the Response object as JSON (bridged responses only)
    input_items: str | None  # its input items as a JSON array (likewise)
    too_large: bool
    metered: bool
    created_at: datetime
    expires_at: datetime
