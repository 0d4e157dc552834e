"""Health: probes, the anti-flap fold, the health view and the state file."""
