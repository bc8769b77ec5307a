"""The admin web UI at `/ui`."""
