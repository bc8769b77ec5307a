"""meterway: a self-hosted LLM gateway that meters and bills every token."""

__version__ = "0.1.0"
