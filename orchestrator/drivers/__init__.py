"""Drivers turn reimage steps into engine calls. Every call is idempotent, so a step repeated after a crash
finishes or undoes what the first try left half done."""
