"""The audio type every part shares: 16-bit signed mono PCM as a numpy int16 array.

The sample rate travels separately (an object's `sample_rate`, or an argument); microphones,
earpieces, VAD, speech-to-text, text-to-speech, tones and DTMF all pass audio as `Pcm`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]
