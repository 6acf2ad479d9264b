"""The operator's side: a live status page, `/metrics` and `/healthz`, served by the phone itself.

A consumer of the call loop (through `build_phone`'s `on_call` / `on_state`); no call code
imports it. `page.py` wires the parts: `board.py` (what happened, in memory), `health.py`
(is each part usable), `metrics.py` (Prometheus) and `web.py` (aiohttp on the call's loop).
"""
