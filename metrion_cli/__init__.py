"""Metrion's command line and the library the proxy's addons share with it."""

# The providers Metrion knows; addons/providers has one module for each (a test keeps them equal).
PROVIDER_NAMES = ("openai", "anthropic", "gemini", "mistral", "xai")
