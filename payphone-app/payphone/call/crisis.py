"""A caller in crisis always hears where to get help: the phone decides, never the model.

`help_for` reads the caller's transcript (as Whisper writes it: any casing, punctuation,
contractions) and, when it is about suicide or self-harm ("crisis") or about danger to life
right now: violence, fire, a medical emergency ("emergency"), returns the persona's fixed help
line with the numbers from the `[help]` settings written out digit by digit, so Piper says
"nine eight eight" and not "nine hundred eighty-eight". The turn then speaks that line instead
of asking the model.

The rules are word patterns, chosen so that a wrong help line is rare and a missed one rarer:
- An emergency outranks a crisis ("I took too many pills" names the emergency number).
- Idioms are blanked out before matching: "I'm dying to know", "that joke killed me", "killer
  deal", "my phone died", "you gave me a heart attack", "killed myself laughing", "Suicide Squad",
  "these shoes are killing me", "a fire in the fireplace".
- Violence told as a story does not fire: a line that is about a movie, show, book or game ("the
  detective solved a murder case in the movie") is not an emergency. Talk of suicide or of a
  medical emergency fires even then.
- "kill me" fires only where it is no hyperbole: "someone is going to kill me", "he's trying to
  kill me", "she said she would kill me"; "my mom is going to kill me" does not.
- "murder", "gun", "shot" alone never fire (a detective persona hears them all the time);
  "someone has a gun", "I've been shot", "there's a shooting" do.
Recognising is a few regular expressions over one sentence: microseconds, safe on the loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from payphone.call.lines import LineBook
from payphone.config import HelpSettings
from payphone.pcm import Pcm
from payphone.personas.loader import Persona

HelpKind = Literal["crisis", "emergency"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class HelpLine:
    """What the persona says instead of a model reply, and why."""

    kind: HelpKind
    text: str


# -- normalising what Whisper wrote ------------------------------------------------------------

_SHORT_FORMS = {
    "im": "i am",
    "ive": "i have",
    "id": "i would",
    "ill": "i will",
    "dont": "do not",
    "doesnt": "does not",
    "didnt": "did not",
    "cant": "can not",
    "cannot": "can not",
    "couldnt": "could not",
    "wont": "will not",
    "wouldnt": "would not",
    "isnt": "is not",
    "arent": "are not",
    "wasnt": "was not",
    "aint": "is not",
    "theres": "there is",
    "hes": "he is",
    "shes": "she is",
    "thats": "that is",
    "whats": "what is",
    "someones": "someone is",
    "somebodys": "somebody is",
    "theyre": "they are",
    "youre": "you are",
    "gonna": "going to",
    "wanna": "want to",
    "gotta": "got to",
    "tryna": "trying to",
}
_NOT = re.compile(r"\b(ca|wo|ai)n't\b|n't\b")
_CLITICS = [
    (re.compile(rf"'{short}\b"), f" {full}")
    for short, full in (("m", "am"), ("re", "are"), ("ve", "have"), ("ll", "will"), ("d", "would"))
]
_IS_AFTER = re.compile(
    r"\b(he|she|it|there|that|what|who|someone|somebody|everyone|nobody|here)'s\b"
)


def _not(match: re.Match[str]) -> str:
    stem = match.group(1)
    return {"ca": "can not", "wo": "will not", "ai": "is not"}[stem] if stem else " not"


def normalise(text: str) -> str:
    """Lower case, no punctuation, contractions spelled out: "I'm NOT-breathing!" ->
    "i am not breathing". A possessive 's is dropped ("my friend's" -> "my friend")."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = _NOT.sub(_not, text)
    text = _IS_AFTER.sub(r"\1 is", text)
    for pattern, spelled in _CLITICS:
        text = pattern.sub(spelled, text)
    text = re.sub(r"'s\b", "", text)
    text = re.sub(r"[^a-z0-9]+", " ", text.replace("'", ""))
    words = [_SHORT_FORMS.get(word, word) for word in text.split()]
    return " ".join(words)


# -- the rules (over normalised text) ----------------------------------------------------------

_PILLS = r"(pills|tablets|medicine|medication|meds|sleeping pills|painkillers|pain killers)"
_PLACES = (
    r"(house|home|building|kitchen|apartment|flat|car|room|bedroom|garage|barn|roof|school|"
    r"store|shop|office|place|hotel|restaurant|bus|truck)"
)
_ATTACKER = (
    r"(someone|somebody|a man|a guy|a woman|a stranger|an intruder|he|she|they|this man|"
    r"this guy|some guy|my husband|my wife|my boyfriend|my girlfriend|my partner|my ex)"
)
_HARM = r"(hurt|kill|shoot|stab|attack|rape|beat|strangle|choke|murder)"
_VICTIM = (
    r"(me|us|my (kids|children|son|daughter|wife|husband|family|mom|mother|dad|father|baby|"
    r"friend|sister|brother|boyfriend|girlfriend|partner))"
)

# phrases that sound alarming but are everyday speech; blanked out before the rules run
IDIOMS = [
    r"\bdying (to|for)\b",
    r"\bto die for\b",
    r"\b(almost |nearly )?died (laughing|of laughter|of embarrassment)\b",
    r"\bkill(ed|ing|s)? (myself|me|us) (laughing|with laughter)\b",
    r"\b(killed|kills|killing) (me|it|us)\b",  # that joke killed me; these shoes are killing me
    r"\bkilling myself (at work|at this job|working|trying|over)\b",
    r"\bkiller\b",
    r"\b(gave|give|giving|given) me a heart attack\b|\bheart attack on a plate\b",
    r"\bstroke of (luck|genius)\b",
    r"\bsuicide (squad|mission|doors?|run|sprints?|king)\b",
    r"\b(a )?fire (going )?in the (fireplace|fire place|fire pit|hearth|stove|grill)\b",
    r"\bnot (breathing|breeding) (a|the) word\b",
    r"\bcan not breathe (i am |from |with )?laugh\w*",
    r"\bshot me a\b",
    r"\bbeat(s|ing|en)? (me|us) (at|in|to|by)\b",
    r"\bbeats me\b",
    r"\bshot down\b",
    r"\b(almost|nearly) (got |been |was )?(hit|run over) by\b",
    r"\bhurt(s|ing)? (\w+ ){1,3}feelings\b",
]

# a line about a story: violence in it is the story's, not the caller's
FICTION = re.compile(
    r"\b(in|on|from|watching|watched|reading|read|playing|played) (the|a|this|that|my) "
    r"(movie|film|show|tv show|series|episode|book|novel|story|game|video game|play|comic|news)\b"
    r"|\bon (tv|the news|netflix)\b"
)

EMERGENCY_MEDICAL = [
    r"\b(having|had|has had|is having) (a|an) (heart attack|stroke|seizure|asthma attack)\b",
    r"\bheart attack\b",
    r"\b(not|stopped|no longer) (breathing|breeding)\b",  # tiny.en hears "breeding" at times
    r"\b(can not|could not|can hardly|struggling to|hard to) breathe\b",
    r"\b(trouble|difficulty) breathing\b",
    r"\b(unconscious|unresponsive|anaphylactic|anaphylaxis)\b",
    r"\b(will not|can not|does not) wake (up|him up|her up|them up)\b",
    r"\bcan not wake (him|her|them|my \w+)\b",
    r"\b(is|am|are) choking\b|\bchoking on\b",
    r"\bbleeding (a lot|badly|heavily|everywhere|so much|to death|out)\b",
    r"\b(will not|can not|does not) stop bleeding\b|\bcan not stop the bleeding\b",
    r"\boverdos(e|ed|ing)\b",
    rf"\b(took|taken|swallow|swallowed) (too many|(a|the) (whole )?bottle of|all (of )?(my|the|his"
    rf"|her)|a handful of) {_PILLS}\b",
    r"\b(drank|swallowed|ate|drunk) (some )?(bleach|poison|antifreeze|rat poison)\b",
    r"\b(been|was|got) poisoned\b",
    r"\b(hit|run over) by a (car|truck|bus|train)\b",
    r"\bambulance\b",
    r"\b(this|it) is an emergency\b|\bmedical emergency\b|\bthere is an emergency\b",
    r"\b(call|dial|ring|phone) (911|9 1 1|999|112|000|nine one one|the police|the cops"
    r"|the fire (department|brigade))\b",
]
EMERGENCY_FIRE = [
    r"\bthere is a fire\b",
    rf"\b({_PLACES}|everything|the whole \w+) is on fire\b",
    r"\b(is|are) burning down\b",
    r"\b(caught|catching) fire\b",
    rf"\bfire in (the|my|our|his|her|their) {_PLACES}\b",
    r"\b(smell|smells|smelling) (gas|smoke)\b|\bgas leak\b",
]
EMERGENCY_VIOLENCE = [
    r"\b(has|has got|have got|is holding|holding|is pointing|pointing|pulled|waving|got)"
    r" (a|an) (gun|knife|weapon|pistol|rifle|shotgun)\b",
    rf"\b{_ATTACKER} (is|are) armed\b",
    rf"\b(trying|threatening|threatened|tried|tries) to {_HARM} {_VICTIM}\b",
    rf"\b(going to|about to|wants to|want to|will) (hurt|shoot|stab|attack|rape|beat up"
    rf"|strangle) {_VICTIM}\b",
    rf"\b{_ATTACKER} (is |are |was )?(going to|about to|wants to|will|would|said .{{0,20}}) kill"
    rf" {_VICTIM}\b",
    rf"\b{_ATTACKER} (is |are |keeps |has been |have been |been |was )?(hitting|kicking|choking"
    r"|strangling|hurting|abusing|attacking|beating|stabbing|shooting at) (me|us|my)\b",
    r"\bbeat(ing|s)? (me|us) up\b",
    r"\b(am|is|are) being (attacked|assaulted|stabbed|shot at|raped|beaten|robbed|followed|chased"
    r"|kidnapped|abused|threatened)\b",
    r"\b(i|he|she|they|we|someone|somebody|my \w+) (has |have |had )?(been|got|was|were|just got"
    r"|just been) (attacked|assaulted|stabbed|shot|raped|mugged|kidnapped|abducted"
    r"|held hostage|robbed at gunpoint)\b",
    r"\b(someone|somebody|a man|people|they|he|she|a guy|burglars?|robbers?) (is |are |just |has "
    r"|have )?(breaking|broke|broken) (in|into)\b",
    rf"\b(breaking|broke) into (my|our|the) {_PLACES}\b|\bintruder\b",
    rf"\b(someone|somebody|a man|a stranger|a guy) (is )?(in|inside) (my|our|the) {_PLACES}\b",
    r"\b(there is a|active) shoot(ing|er)\b|\bshots fired\b|\bgun ?(shots|fire)\b",
    r"\bshooting at (me|us|people|everyone|someone|somebody|cars|the police|police)\b",
    r"\b(going to|want to|about to|plan to|planning to|will) (kill|hurt|shoot|stab)"
    r" (someone|somebody|people|everyone|everybody|them all)\b",
    r"\b(going to|want to|about to|plan to|planning to|will) (shoot|stab) (him|her|them)\b",
    r"\bdomestic (violence|abuse)\b",
]
_ME = r"(myself|my self)"
CRISIS = [
    r"\bsuicid(e|al)\b",
    rf"\b(kill|killing|hang|hanging|shoot|shooting) {_ME}\b",
    r"\b(end|ending) (it all|my (own )?life|my existence)\b",
    r"\b(take|taking|took) my (own )?life\b",
    r"\b(want|wanted|wanting|deserve) to die\b",
    r"\bwish i (was|were|could be) dead\b|\bwish i could (just )?die\b",
    r"\bwish i (had never been|was never|were never) born\b",
    r"\bbetter off dead\b|\bbetter off without me\b",
    r"\b(do not|no longer) want to (live(?! (in|with|here|there|near|at|on|somewhere|anywhere"
    r"|by|next|far|close|together))|be alive|exist)\b",
    r"\b(do not|no longer) want to wake up(?! (early|late|at|for|so|before|in|on|this|until"
    r"|till|when|with))\b",
    r"\b(do not|no longer) want to be (here|around) (anymore|any more)\b",
    # tiny.en often hears "live anymore" as "love anymore": distress either way (988 is for both)
    r"\b(do not|no longer) want to love (anymore|any more)\b",
    r"\b(do not|no longer) want to go on (living|anymore|any more)\b",
    r"\b(can not|could not) go on (anymore|any more|living)\b",
    r"\b(tired|sick) of (living|being alive|life)\b",
    r"\bno (reason|point) (to live|in living|living|to go on|in going on)\b",
    r"\bnothing (left )?to live for\b",
    r"\bnot worth living\b|\blife is not worth it\b",
    r"\bself ?harm(ing)?\b",
    rf"\b(hurting|harming|cutting|burning|starving) {_ME}\b(?! (a|an|some|off|free|loose)\b)",
    rf"\b(?<!not )to (hurt|harm|cut|burn|starve) {_ME}\b(?! (a|an|some|off|free|loose)\b)",
    rf"\bset {_ME} on fire\b|\bslit my wrists?\b",
    r"\b(want to|thinking about|thought about|thinking of) jump(ing)? (off|from) (a|the)"
    r" (bridge|building|roof|cliff)\b",
]

_idioms = [re.compile(p) for p in IDIOMS]
_medical_fire = [re.compile(p) for p in EMERGENCY_MEDICAL + EMERGENCY_FIRE]
_violence = [re.compile(p) for p in EMERGENCY_VIOLENCE]
_crisis = [re.compile(p) for p in CRISIS]


def recognise(transcript: str) -> HelpKind | None:
    """ "emergency", "crisis", or None for ordinary speech (see the module's rules)."""
    text = normalise(transcript)
    for idiom in _idioms:
        text = idiom.sub(" ", text)
    if any(rule.search(text) for rule in _medical_fire):
        return "emergency"
    if not FICTION.search(text) and any(rule.search(text) for rule in _violence):
        return "emergency"
    if any(rule.search(text) for rule in _crisis):
        return "crisis"
    return None


# -- what the persona says ---------------------------------------------------------------------


def spoken_number(number: str) -> str:
    """ "988" -> "nine eight eight"; groups keep a pause: "116 123" -> "one one six, one two
    three". Piper reads digits as a number ("nine hundred eighty-eight"), callers dial digits."""
    groups = re.split(r"[ -]+", number.strip())
    return ", ".join(" ".join(DIGIT_WORDS[int(d)] for d in group) for group in groups)


def help_line(kind: HelpKind, persona: Persona, numbers: HelpSettings) -> HelpLine:
    """The persona's line for `kind`, with the numbers from the settings."""
    template = persona.help.crisis if kind == "crisis" else persona.help.emergency
    text = template.format(
        crisis_number=spoken_number(numbers.crisis_number),
        emergency_number=spoken_number(numbers.emergency_number),
    )
    return HelpLine(kind, text)


def help_for(transcript: str, persona: Persona, numbers: HelpSettings) -> HelpLine | None:
    """The help line this transcript calls for, or None: the one call a turn makes."""
    kind = recognise(transcript)
    return None if kind is None else help_line(kind, persona, numbers)


async def render_help(lines: LineBook, persona: Persona, line: HelpLine) -> Pcm:
    """The help line in the persona's voice, steady: every caller hears the one rendering the
    tests hear back (with Piper's variation on, Whisper misheard "nine eight eight" in 3 of
    250 COMP-U-TRON renderings)."""
    return await lines.render(persona, line.text, steady=True)


async def prerender_help(
    lines: LineBook, personas: Iterable[Persona], numbers: HelpSettings
) -> int:
    """Render every persona's help lines at start-up, so a caller in crisis hears one at once
    (a whole line takes Piper seconds on a Pi); returns how many."""
    count = 0
    for persona in personas:
        for kind in get_args(HelpKind):
            await render_help(lines, persona, help_line(kind, persona, numbers))
            count += 1
    return count
