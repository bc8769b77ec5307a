"""Stand-in upstream servers used by meterway's end-to-end tests."""
