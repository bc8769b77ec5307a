"""Configuration: LiteLLM's YAML format read into frozen Settings (see `load`)."""

from meterway.config.load import demo_settings, load_settings
from meterway.config.secret import Secret
from meterway.config.settings import Deployment, Prices, Settings

__all__ = ["Deployment", "Prices", "Secret", "Settings", "demo_settings", "load_settings"]
