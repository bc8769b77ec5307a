"""The admin service: what every management, report and billing handler is given, whoever calls
it. The HTTP API, the admin UI and the command line build one `Admin` each, from the open store,
and call the same handlers with it, so the three cannot disagree.

It is built whole: the gateway builds it in `services.open_services` once the store is open and
the billing sender, usage webhooks and runtime models exist; the command line builds it in
`cli.admin.open_admin` with what a one-off command has (no sender, no webhooks, and Lago only for
the commands that talk to it). Nothing is assigned to it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meterway.auth.changes import Changes
from meterway.config.secret import Secret
from meterway.errors import ServiceUnavailable

if TYPE_CHECKING:
    from meterway.api.webhooks import Webhooks
    from meterway.billing.prepaid import Prepaid
    from meterway.billing.sender import Sender
    from meterway.billing.setup import BillingLink
    from meterway.routing.runtime import RuntimeModels
    from meterway.store.runtime import Store


@dataclass(frozen=True, slots=True)
class Admin:
    store: Store
    changes: Changes  # where a change is announced, so every replica's caches drop what it made stale
    secret: Secret | None = None  # derives regenerated keys, so a retried regeneration gives the same key
    billing: BillingLink | None = None  # Lago, when billing export is configured
    sender: Sender | None = None  # the billing sender of this process, when it runs one
    webhooks: Webhooks | None = None  # usage reported by other proxies (the gateway's, not the CLI's)
    models: RuntimeModels | None = None  # /model/*: deployments in the database
    prepaid: Prepaid | None = None  # prepaid credits (billing.prepaid not off): shown by /customer/info

    def ingest(self) -> Webhooks:
        """The usage webhooks, or a 503 where this process has none."""
        if self.webhooks is None:
            raise ServiceUnavailable("The usage webhooks are not served by this process.")
        return self.webhooks
