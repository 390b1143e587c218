"""overhaul-agent: probes the local application like Azure's Application Health extension."""

__version__ = "0.1.0"
