"""payphone-ai: the talking payphone app."""
