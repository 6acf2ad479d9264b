"""Every knob of the payphone, typed and bounded, in one place.

Precedence, lowest first: defaults < TOML file < `.env` < environment (`PAYPHONE_` prefix, nested
groups joined with `__`, e.g. `PAYPHONE_VAD__AGGRESSIVENESS=2`). A bad value is reported by
`payphone.settings_errors` naming the setting the way the user wrote it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from payphone.settings_errors import SettingsError, explain

ENV_PREFIX = "PAYPHONE_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_CONFIG_FILE = Path("/etc/payphone/payphone.toml")
DEFAULT_ENV_FILE = Path(".env")

BcmPin = Annotated[int, Field(ge=0, le=27, description="BCM GPIO number")]
DeviceSelector = Annotated[
    str | int | None,
    Field(description="name substring (USB cards change index) or index; empty = system default"),
]


class Group(BaseModel):
    """A settings group: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class AudioSettings(Group):
    input_device: DeviceSelector = None
    output_device: DeviceSelector = None
    device_rate: Literal[8000, 16000, 22050, 32000, 44100, 48000] = 48000
    buffer_ms: Annotated[int, Field(ge=5, le=200)] = 20
    retry_max_s: Annotated[float, Field(gt=0, le=300)] = 30.0


class HookSettings(Group):
    pin: BcmPin = 17
    switch: Literal["normally_open", "normally_closed"] = "normally_open"
    pull_up: bool = True
    debounce_ms: Annotated[int, Field(ge=1, le=1000)] = 50


class KeypadSettings(Group):
    source: Literal["matrix", "mt8870", "inband", "none"] = "inband"
    layout: Literal["4x3", "4x4"] = "4x3"
    row_pins: list[BcmPin] = Field(default_factory=lambda: [5, 6, 13, 19])
    column_pins: list[BcmPin] = Field(default_factory=lambda: [12, 16, 20])
    mt8870_pins: list[BcmPin] = Field(
        default_factory=lambda: [22, 23, 24, 25], description="Q1..Q4"
    )
    mt8870_std_pin: BcmPin = 27
    debounce_ms: Annotated[int, Field(ge=1, le=500)] = 30
    scan_interval_ms: Annotated[int, Field(ge=1, le=100)] = 5


class EchoSettings(Group):
    """Echo cancellation: the earpiece's own voice taken out of the mic before VAD and STT
    (WebRTC AEC3, `payphone.speech.echo_canceller`). Without it barge-in stays off."""

    enabled: bool = True
    # AEC3 finds the earpiece-to-mic delay itself; a hint (ms) only helps it start there
    delay_ms: Annotated[int, Field(ge=0, le=500)] = 0
    noise_suppression: bool = False
    # the words (Whisper, the end-of-turn model) come from speexdsp's linear filter, which
    # leaves a caller's first syllable over the persona whole where AEC3's suppressor dents
    # it; its tail (ms) must cover the earpiece-to-mic delay plus the handset's ring-down.
    # 0: the words come from AEC3 too
    words_tail_ms: Annotated[int, Field(ge=0, le=500)] = 128


class VadSettings(Group):
    aggressiveness: Annotated[int, Field(ge=0, le=3)] = 2
    frame_ms: Literal[10, 20, 30] = 30
    sample_rate: Literal[8000, 16000, 32000, 48000] = 16000
    start_voiced_frames: Annotated[int, Field(ge=1, le=50)] = 4
    start_window_frames: Annotated[int, Field(ge=1, le=50)] = 6
    hangover_ms: Annotated[int, Field(ge=90, le=5000)] = 600
    preroll_ms: Annotated[int, Field(ge=300, le=2000)] = 300
    min_utterance_ms: Annotated[int, Field(ge=0, le=5000)] = 200
    max_utterance_s: Annotated[float, Field(ge=1, le=60)] = 15.0
    # the caller can talk over the persona (needs the echo canceller: without it the phone
    # keeps the mic closed while the persona speaks, and says so)
    barge_in: bool = True
    # the persona falls silent as soon as the caller speaks over it; this much voiced speech
    # stops it for good (a barge-in). Shorter speech is judged by its words: a backchannel
    # ("mm-hm", "yeah, okay", a cough) lets it go on, a short request ("Stop.") takes the turn
    barge_in_min_ms: Annotated[int, Field(ge=60, le=3000)] = 700
    # over the persona's voice (with barge-in) speech starts at this many voiced frames of the
    # start window (at most all of it): a soft onset ("Excuse me") through the echo canceller
    # has few, and the persona falling silent a frame sooner is what the caller notices
    barge_in_start_frames: Annotated[int, Field(ge=1, le=50)] = 3

    @model_validator(mode="after")
    def _start_rules_fit_the_window(self) -> VadSettings:
        """A start rule needs no more voiced frames than its window holds (the barge-in rule's
        default shrinks with a smaller window)."""
        written = {"start_voiced_frames"} | (self.model_fields_set & {"barge_in_start_frames"})
        for name in sorted(written):
            if getattr(self, name) > self.start_window_frames:
                raise ValueError(
                    f"vad.{name} ({getattr(self, name)}) must be at most "
                    f"vad.start_window_frames ({self.start_window_frames})"
                )
        return self


class TurnSettings(Group):
    """When the caller has finished: a short pause asks the end-of-turn model; a long one always
    ends the turn. With no model (`model = ""`, or it fails to load) the silence rule
    `vad.hangover_ms` decides alone."""

    model: str = Field(
        default="smart-turn-v3.2",
        description="path or name of the Smart Turn ONNX; empty = silence rule only",
    )
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    pause_ms: Annotated[int, Field(ge=60, le=1000)] = 180
    # a first look at this much silence ends a turn that already sounds finished; unsure, the
    # model is asked again at pause_ms. >= pause_ms: one look, at pause_ms
    first_check_ms: Annotated[int, Field(ge=30, le=1000)] = 90
    # Whisper starts on what was said at this much silence (the transcript is ready sooner
    # when the pause ends the turn, thrown away when the caller goes on), once a check asked by
    # then has answered (the two share the CPU badly). Below first_check_ms it runs in the
    # silence before the first look, which is asked once it is done (on the silence there is by
    # then, often pause_ms already: one look instead of two): 30 brought the reply ~50 ms
    # sooner than 90 (`bench turns`, the same lines paired)
    transcribe_ms: Annotated[int, Field(ge=30, le=1000)] = 30
    max_silence_ms: Annotated[int, Field(ge=300, le=5000)] = 1200
    speculate_ms: Annotated[int, Field(ge=100, le=5000)] = 500
    # the model unsure, but the words a complete statement ("... I can barely hear you."):
    # answered after this much silence instead of max_silence_ms
    complete_ms: Annotated[int, Field(ge=100, le=5000)] = 800
    # a check runs while the other stages wait for it: on two threads it took 30-35 ms here
    # after a call's idle (its threads spin while it runs, and only then), on one 46
    threads: Annotated[int, Field(ge=1, le=8)] = 2


class SttSettings(Group):
    model: Annotated[str, Field(min_length=1)] = "tiny.en"
    compute_type: Literal["int8", "int8_float32", "float32"] = "int8"
    cpu_threads: Annotated[int, Field(ge=0, le=64)] = 0
    language: Annotated[str, Field(pattern=r"^[a-z]{2}$")] = "en"
    beam_size: Annotated[int, Field(ge=1, le=10)] = 1
    window: Literal["utterance", "full"] = "utterance"
    no_speech_threshold: Annotated[float, Field(ge=0, le=1)] = 0.6


class TtsSettings(Group):
    voice: Annotated[str, Field(min_length=1)] = "en_US-joe-medium"
    telephone_filter: bool = True
    target_dbfs: Annotated[float, Field(ge=-40, le=-3)] = -18.0
    # the first chunk may end at a comma once it has this many words: short = early first audio
    first_chunk_words: Annotated[int, Field(ge=1, le=50)] = 4


def _one_or_many(value: Any) -> Any:
    """`listen = "127.0.0.1:8080"` (or `ollama_hosts = "http://..."`) or a list; a
    comma-separated string (env) is a list too."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


DEFAULT_OLLAMA_HOST = AnyHttpUrl("http://10.10.10.11:11434")


def _some_hosts(hosts: list[AnyHttpUrl]) -> list[AnyHttpUrl]:
    """An explicit empty list is a mistake (no model host at all), never "use the default"."""
    if not hosts:
        raise ValueError(
            'give at least one Ollama server, e.g. ["http://10.10.10.11:11434"] '
            "(or leave llm.ollama_hosts out and set llm.ollama_host)"
        )
    return hosts


class LlmSettings(Group):
    """The persona model. With Ollama, `ollama_hosts` lists the model hosts in the order a turn
    tries them (health-aware failover, `payphone.llm.failover`); `ollama_host` is the one-host
    shorthand and, when the list is given, reads as its first entry."""

    backend: Literal["embedded", "ollama"] = "embedded"
    gguf: Annotated[str, Field(min_length=1)] = "SmolLM2-135M-Instruct"
    ollama_host: AnyHttpUrl = DEFAULT_OLLAMA_HOST
    ollama_hosts: Annotated[
        list[AnyHttpUrl],
        BeforeValidator(_one_or_many),
        AfterValidator(_some_hosts),
        Field(description="Ollama servers in the order a turn tries them; unset = [ollama_host]"),
    ] = Field(default_factory=lambda: [DEFAULT_OLLAMA_HOST])
    ollama_model: Annotated[str, Field(min_length=1)] = "payphone-persona"
    keep_alive: str = "-1"
    # auto: what the model says it was trained on (GGUF `payphone.prompt_style`), else full
    prompt_style: Literal["auto", "tag", "full"] = "auto"
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    first_token_timeout_s: Annotated[float, Field(gt=0, le=120)] = 8.0
    token_timeout_s: Annotated[float, Field(gt=0, le=60)] = 4.0
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    num_predict: Annotated[int, Field(ge=8, le=1024)] = 96
    num_ctx: Annotated[int, Field(ge=256, le=32768)] = 2048
    # the embedded model's threads while Whisper, Piper or the turn model work (0: half the
    # cores), and while none of them does (0: every core; see payphone/cores.py)
    n_threads: Annotated[int, Field(ge=0, le=64)] = 0
    n_threads_alone: Annotated[int, Field(ge=0, le=64)] = 0
    history_tokens: Annotated[int, Field(ge=64, le=16384)] = 1024
    # the guard ends a reply at the first sentence end past this, and trails off a quarter later:
    # at most 50 words (~18 s spoken), the length the persona data and the phone are made for
    max_reply_words: Annotated[int, Field(ge=5, le=300)] = 40
    # a public phone: the reply ends politely at any of these (`*` matches word endings)
    blocklist: list[str] = Field(
        default_factory=lambda: [
            "fuck*",
            "motherfuck*",
            "shit*",
            "cunt*",
            "bitch*",
            "asshole*",
            "bastard*",
            "dickhead*",
        ]
    )

    @field_validator("ollama_hosts")
    @classmethod
    def _shorthand_agrees(cls, hosts: list[AnyHttpUrl], info: ValidationInfo) -> list[AnyHttpUrl]:
        single = info.data.get("ollama_host")
        unset = hosts == [DEFAULT_OLLAMA_HOST]
        if not unset and single not in (None, DEFAULT_OLLAMA_HOST) and single not in hosts:
            raise ValueError(
                f"llm.ollama_host ({single}) is not in this list: set only llm.ollama_hosts "
                "(ollama_host is the one-host shorthand)"
            )
        return hosts

    @model_validator(mode="after")
    def _hosts_and_shorthand(self) -> LlmSettings:
        """Either way both read the same: the list, and its first entry as `ollama_host` (what
        `doctor` and the status page probe)."""
        if "ollama_hosts" not in self.model_fields_set:
            self.ollama_hosts = [self.ollama_host]
        else:
            self.ollama_host = self.ollama_hosts[0]
        return self

    @property
    def hosts(self) -> list[str]:
        """The Ollama servers as URLs, in the order a turn tries them."""
        return [str(h) for h in self.ollama_hosts]


class CallSettings(Group):
    dial_tone_s: Annotated[float, Field(gt=0, le=120)] = 4.0
    inter_digit_timeout_s: Annotated[float, Field(gt=0, le=30)] = 3.0
    idle_prompt_s: Annotated[float, Field(gt=0, le=600)] = 15.0
    idle_goodbye_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    max_call_s: Annotated[float, Field(gt=0, le=7200)] = 600.0
    filler_after_s: Annotated[float, Field(gt=0, le=10)] = 1.2
    default_persona_key: Annotated[str, Field(pattern=r"^[0-9A-D]$")] = "0"


# digits, optionally grouped by single spaces or hyphens ("988", "116 123", "13-11-14")
HelpNumber = Annotated[
    str,
    Field(
        pattern=r"^[0-9](?:[ -]?[0-9]){1,14}$",
        description="2 to 15 digits, optionally grouped by spaces or hyphens",
    ),
]


class HelpSettings(Group):
    """Where a caller in crisis is sent. The phone itself (never the model) recognises talk of
    suicide, self-harm, violence or a medical emergency and names these numbers, spoken digit by
    digit, in the persona's voice. Always on; set your country's numbers."""

    crisis_number: HelpNumber = "988"  # suicide, self-harm, emotional crisis (US: 988 Lifeline)
    emergency_number: HelpNumber = "911"  # police, fire, ambulance


class PersonaSettings(Group):
    user_dir: Path | None = None


class ModelSettings(Group):
    dir: Path = Field(
        default_factory=lambda: (
            Path(os.environ.get("STATE_DIRECTORY") or Path.home() / ".cache" / "payphone")
            / "models"
        )
    )
    hub_url: AnyHttpUrl = AnyHttpUrl("https://huggingface.co")
    allow_download: bool = False


def _host_port(text: str) -> str:
    """`127.0.0.1:8080`, `[fd00::1]:8080` or `localhost:8080`: an address this machine has."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:8080")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare != "localhost":
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(
                f"{host or '(empty)'} is not an IP address (or localhost); "
                "e.g. 127.0.0.1:8080 or the private link's 10.10.10.10:8080"
            ) from None
    return f"{host}:{int(port)}"


def _token(text: str) -> str:
    """Empty, or a secret that can ride in a URL (`?token=`) and a `Bearer` header as it is."""
    if text and not re.fullmatch(r"[A-Za-z0-9._~-]{16,}", text):
        raise ValueError(
            "a token is 16 or more of A-Z a-z 0-9 . _ ~ - (e.g. from `openssl rand -hex 16`)"
        )
    return text


HostPort = Annotated[str, AfterValidator(_host_port)]


class StatusSettings(Group):
    """The operator's status page, `/metrics` and `/healthz`, served by the service itself.

    Read-only. Listens on localhost only unless told otherwise (add the private link's address
    to reach it from the bar's back office); all interfaces (0.0.0.0) only with a token.
    """

    token: Annotated[
        str,
        AfterValidator(_token),
        Field(description="empty = no token; else 16+ URL-safe characters"),
    ] = ""
    listen: Annotated[list[HostPort], BeforeValidator(_one_or_many)] = Field(
        default_factory=lambda: ["127.0.0.1:8080"],
        description="HOST:PORT addresses to serve on; empty = no status page",
    )
    # transcripts are personal data: status_page = shown for the last calls only, in memory;
    # off = never kept; journal = also written to the log
    transcripts: Literal["status_page", "off", "journal"] = "status_page"
    keep_calls: Annotated[int, Field(ge=1, le=100)] = 20

    @field_validator("listen")
    @classmethod
    def _wildcard_needs_token(cls, listen: list[str], info: ValidationInfo) -> list[str]:
        wildcard = [a for a in listen if a.rpartition(":")[0].strip("[]") in ("0.0.0.0", "::")]
        if wildcard and not info.data.get("token"):
            raise ValueError(f"{wildcard[0]} listens on every network: set [status] token too")
        return listen


class LoggingSettings(Group):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


PHONE_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"


def default_phone_id() -> str:
    """This machine's host name as a slug (`Payphone-Bar.local` -> `payphone-bar`)."""
    name = socket.gethostname().split(".")[0].lower()
    slug = re.sub(r"[^a-z0-9-]+", "-", name)[:32].strip("-")
    return slug or "payphone"


PhoneId = Annotated[
    str,
    Field(
        pattern=PHONE_ID_PATTERN,
        description="1 to 32 of a-z 0-9 and inner hyphens, e.g. bar-left",
    ),
]


_toml_file: ContextVar[Path | None] = ContextVar("payphone_toml_file", default=None)


class Settings(BaseSettings):
    """The whole configuration; build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    # which phone this is, in every log event, in /metrics and in each request to Ollama (the
    # `X-Payphone-Phone` header), so one model host's logs tell several phones apart
    phone_id: PhoneId = Field(default_factory=default_phone_id)
    audio: AudioSettings = Field(default_factory=AudioSettings)
    hook: HookSettings = Field(default_factory=HookSettings)
    keypad: KeypadSettings = Field(default_factory=KeypadSettings)
    echo: EchoSettings = Field(default_factory=EchoSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    turn: TurnSettings = Field(default_factory=TurnSettings)
    stt: SttSettings = Field(default_factory=SttSettings)
    tts: TtsSettings = Field(default_factory=TtsSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    call: CallSettings = Field(default_factory=CallSettings)
    help: HelpSettings = Field(default_factory=HelpSettings)
    personas: PersonaSettings = Field(default_factory=PersonaSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # first wins: explicit arguments, environment, .env, TOML file, defaults
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        toml_file = _toml_file.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def config_file_in_use(explicit: Path | None) -> Path | None:
    """The TOML file to read: `--config`, else $PAYPHONE_CONFIG, else /etc/payphone if present."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(
    config_file: Path | None = None,
    env_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read settings from every source; raises `SettingsError` with readable problems.

    `overrides` (e.g. `{"llm": {"backend": "ollama"}}`, from command-line options) win over
    every source.
    """
    toml_path = config_file_in_use(config_file)
    env_path = env_file if env_file is not None else DEFAULT_ENV_FILE
    if toml_path is not None and not toml_path.is_file():
        raise SettingsError([f"config file {toml_path}: not found"])
    token = _toml_file.set(toml_path)
    try:
        return Settings(_env_file=env_path, **(overrides or {}))
    except Exception as exc:
        raise explain(exc, Settings, toml_path, env_path) from exc
    finally:
        _toml_file.reset(token)
