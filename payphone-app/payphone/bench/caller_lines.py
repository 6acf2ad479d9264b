"""What the benches' callers say: the same lines wherever a bench needs a caller's words, so
figures from different benches are about the same turns."""

LINES = (
    "Hello, who am I speaking with?",
    "Can you connect me to the bakery on Main Street?",
    "What is the weather going to be like tomorrow?",
    "I need the number for the train station, please.",
    "Tell me something nice about this town.",
    "Is anybody there? I can barely hear you.",
    "What time does the library close tonight?",
    "My car broke down and I need a tow truck.",
)
