"""The usage ledger: what each request used and what it cost."""
