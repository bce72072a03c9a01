"""The pure core: plans, model specs and the memory estimate (standard library and pydantic only)."""
