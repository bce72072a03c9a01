"""Tests of the measurement store."""
