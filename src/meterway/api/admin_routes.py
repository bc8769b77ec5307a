"""Every admin route, `(method, path) -> handler`: keys, teams, users and customers, reports,
billing, the usage webhooks' admin side and runtime models. The gateway serves this table over
HTTP, the UI calls the same handlers in-process, and `/openapi.json` is checked against it."""

from __future__ import annotations

from meterway.api import billing, management, model_admin, reports, tenancy, webhook_admin
from meterway.api.management import Handler

ROUTES: dict[tuple[str, str], Handler] = {
    **management.ROUTES,
    **tenancy.ROUTES,
    **reports.ROUTES,
    **billing.ROUTES,
    **webhook_admin.ROUTES,
    **model_admin.ROUTES,
}
