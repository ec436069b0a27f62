"""Governance on the write side: rules folded from events, shared counters, enforcement."""
