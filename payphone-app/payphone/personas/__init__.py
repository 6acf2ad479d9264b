"""Persona files (TOML) shipped with the app, and their loader."""
