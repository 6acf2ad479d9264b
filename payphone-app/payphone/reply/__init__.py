"""The reply text path between the model and the voice: output guard, markup, chunker."""
