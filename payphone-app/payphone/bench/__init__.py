"""Benchmarks that print figures (`python -m payphone bench NAME`), never pass/fail."""
