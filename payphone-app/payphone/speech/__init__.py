"""VAD, speech-to-text, text-to-speech, call-progress and DTMF tones, the text chunker."""
