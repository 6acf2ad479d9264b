"""Chat backends (Ollama on Pi #2, embedded llama.cpp), history, fallbacks."""
