"""The simulated payphone: scripted calls, WAV in/out, latency report."""
