"""Versioned persona models: install a new GGUF beside the previous ones, switch, roll back."""
