"""overhaul orchestrator: health-gated rolling OS image upgrades of scale sets of local instances."""

__version__ = "0.1.0"
