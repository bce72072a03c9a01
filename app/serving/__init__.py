"""Serving: the GPUs to serve a (fine-tuned) model - weights, KV cache and engine overheads per GPU, over the tiers.

The pure part (stdlib + pydantic, like app/core): plan, layout, kv, weights, hf, paged, terms, tiers, estimate,
result, report. `plan_serving(model, plan, layout)` is the one entry point; `sources.layout_for` (an edge) reads the
config fields the layout needs from the catalog.
"""
