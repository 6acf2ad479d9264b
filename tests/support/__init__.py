"""Test servers and helpers that speak real protocols (no mocks of the libraries under test)."""
