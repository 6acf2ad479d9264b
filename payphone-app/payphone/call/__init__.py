"""The call loop: states, timers, persona switching, barge-in (pure asyncio)."""
