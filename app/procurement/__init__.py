"""Procurement: one report with the training plan and the serving plan side by side, and the GPUs both need."""
