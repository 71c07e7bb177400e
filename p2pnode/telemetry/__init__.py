"""What this machine has: GPU/CPU probe, calibration, metrics."""
