"""Billing export: ledger rows turned into Lago events, exactly once (docs/billing.md)."""
