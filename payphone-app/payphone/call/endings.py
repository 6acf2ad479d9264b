"""Does what the caller said so far sound unfinished? The words' half of the end-of-turn call.

The acoustic model hears intonation, not grammar: "My name is" and "Could you tell me" can
sound finished. Whisper's transcript shows what it cannot: a trailing comma, dash or ellipsis
(Whisper writes them where speech trails off), or a last word that rarely ends an English
sentence (an article, a possessive, a preposition, a conjunction, "is", a filler). A wrong
"unfinished" costs only the wait up to the silence limit; a wrong "finished" cuts the caller off.
"""

from __future__ import annotations

import re

TRAILING = ("...", "…", ",", "-", "—", ";", ":")
DETERMINERS = ("a", "an", "the", "my", "your", "his", "her", "our", "their", "this", "these")
CONJUNCTIONS = ("and", "but", "or", "nor", "so", "because", "if", "when", "while", "than")
PREPOSITIONS = ("to", "of", "in", "on", "at", "by", "for", "with", "from", "into", "about", "as")
OTHERS = ("is", "are", "was", "were", "like", "um", "uh", "er", "erm", "ah", "wondering")
MODALS = ("could", "would", "should")  # "I was wondering if you could"
CANNOT_END = frozenset(DETERMINERS + CONJUNCTIONS + PREPOSITIONS + OTHERS + MODALS)
# a verb that gives someone something, then "me": "Could you tell me" waits for what, even
# when the caller's voice rose and Whisper wrote a question mark ("Could you tell me?")
GIVES = frozenset(("tell", "show", "give", "bring", "send", "let", "teach", "lend", "pass", "hand"))
RECEIVERS = frozenset(("me", "us"))
COMPLETE_MIN_WORDS = 5  # "I was wondering." is a fragment Whisper closed with a full stop
_WORD = re.compile(r"[A-Za-z']+")


def asks(text: str) -> bool:
    """Whisper heard a question: that, at least, is a finished sentence."""
    return text.rstrip().endswith("?")


def sounds_unfinished(text: str) -> bool:
    """True when the transcript trails off (punctuation) or stops on a word that cannot end it."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(TRAILING):
        return True
    words = _WORD.findall(stripped.lower())  # "My name is." still stops on "is"
    if len(words) >= 2 and words[-1] in RECEIVERS and words[-2] in GIVES:
        return True
    if asks(stripped) or stripped.endswith("!"):
        return False
    return bool(words) and words[-1] in CANNOT_END


def reads_complete(text: str) -> bool:
    """A whole statement: closed by a full stop or an exclamation mark, long enough not to be a
    fragment Whisper punctuated, and not trailing off. The turn model may hear such a sentence
    as unsure (a flat ending); the words then let it be answered before the silence limit."""
    stripped = text.strip()
    if not stripped.endswith((".", "!")) or stripped.endswith(TRAILING):
        return False
    return len(_WORD.findall(stripped)) >= COMPLETE_MIN_WORDS and not sounds_unfinished(stripped)


# what a listener says to show they are still there, not to take the turn
BACKCHANNEL_WORDS = frozenset(
    (
        *("mm", "mmm", "mhm", "hmm", "hm", "uh", "huh", "uhhuh", "um", "ah", "oh", "wow"),
        *("yeah", "yes", "yep", "yup", "ok", "okay", "right", "sure", "alright", "really"),
        *("i", "see", "got", "it", "go", "on"),  # "I see", "got it", "go on"
    )
)


def is_backchannel(text: str) -> bool:
    """ "Mm-hm.", "Yeah, okay.", "Right." (or nothing at all): a listener's noises, no request."""
    words = _WORD.findall(text.lower().replace("-", " "))
    return len(words) <= 4 and all(word in BACKCHANNEL_WORDS for word in words)


# words a caller uses to take the floor from a speaker, even in a short burst
FLOOR_WORDS = frozenset(
    (
        *("stop", "wait", "hold", "hang", "sorry", "pardon", "what", "no", "nope", "hey"),
        *("hello", "excuse", "listen", "actually", "but", "please", "help", "enough", "quiet"),
        *("operator", "grandma", "detective", "jones", "mae", "computer", "who", "why", "how"),
    )
)
FLOOR_MIN_WORDS = 5  # a short burst with this many words is a sentence, whatever it says


def takes_the_floor(text: str) -> bool:
    """Short speech over the persona that asks for the turn: a question, a word callers use to
    cut in ("Stop.", "Wait, no"), or a whole sentence. Anything else that short ("and then make
    them" for a Piper "Mm-hm.") is more likely a listener's noise Whisper made words of."""
    words = _WORD.findall(text.lower().replace("-", " "))
    if not words:
        return False
    return asks(text) or len(words) >= FLOOR_MIN_WORDS or any(w in FLOOR_WORDS for w in words)


# a caller's "Hello?" or "Hi there." before they say what they want
GREETING_WORDS = frozenset(("hello", "hi", "hey", "hiya", "howdy"))
GREETING_FILL = frozenset(("there", "oh", "um", "uh", "er", "operator", "grandma", "detective"))


def only_greets(text: str) -> bool:
    """ "Hello?", "Hi there.": a greeting and nothing more. Callers go on after it more often
    than not ("Hello, who am I speaking with?"), and the turn model hears a finished turn in it
    (Whisper even writes "Hello?"), so it is answered at the silence limit: the persona answered
    "Hello?" over "who am I speaking with?" in 2 of `bench turns`' 34 lines."""
    words = _WORD.findall(text.lower())
    if not words or not any(w in GREETING_WORDS for w in words):
        return False
    return all(w in GREETING_WORDS or w in GREETING_FILL for w in words)


def only_opens(text: str) -> bool:
    """A short burst that begins with a word callers cut in with and asks nothing yet ("Stop.",
    "Actually", "Hang on."): callers go on after it more often than not, so it is answered at
    the silence limit. "Tell me a joke." is a whole request, answered at once."""
    words = _WORD.findall(text.lower().replace("-", " "))
    if not words or asks(text) or len(words) >= FLOOR_MIN_WORDS:
        return False
    return words[0] in FLOOR_WORDS
