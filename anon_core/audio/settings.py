"""Audio settings: VAD, speakers, voice-anonymization method and targets, mute ranges, encoding.

Defaults (measured with benchmarks/voice_privacy.py and voice_eer.py; see models/voice.md, benchmarks/RESULTS.md):

- method ``world``: WORLD vocoder re-synthesis with the pitch moved to a random target F0 (at least 6 semitones
  from the speaker's own, intonation range rescaled), the spectral envelope warped by a random factor (1.3-1.5,
  in the direction of the pitch change) plus a McAdams power warp (alpha 0.6-0.75), a random smooth +-10 dB
  curve (8 cosine terms) added to the envelope (it hides the microphone/room colouring an attacker also keys
  on), and the speech put at -26 dBFS (the recording level alone links one speaker's assets). Issue 21 raised
  these from formants 1.2-1.4 / McAdams 0.65-0.8 / 4-term +-8 dB curve / level kept: ignorant EER 36.9 -> 43.2 %,
  lazy-informed 38.4 -> 44.0 %, lazy TAR at 1 % FAR 10 -> 2.4 %, at the price of a larger Whisper WER increase
  (26 -> 44.5 %).
  Piecewise warp, formant drift and envelope flattening are available but off (no gain over these at equal WER;
  envelope_flatten=0.7 with the old ranges is the robust lighter choice, see RESULTS.md).
- method ``resynth`` (opt-in: its synthesizer, eSpeak NG, is GPL-3.0-or-later, outside the permissive default
  ``models.allow_licenses``): Whisper base recognises the words, eSpeak NG speaks them again in one fixed voice,
  each phrase in the time span it had, silence elsewhere, speech at a fixed level. Every speaker comes out as the
  same voice (issue 21: pooled EER 52 / 46 / 45 % ignorant / lazy / semi-informed, Whisper WER +19 %, but one of
  five held-out speakers still at 31 % EER, so not the default; benchmarks/RESULTS.md); prosody,
  background and non-English speech are lost, and Whisper's errors are spoken. Fails closed without either model.
- targets ``random`` per asset unless a key is set (env var ``key_env``): then the target of a speaker is
  derived from HMAC(key, speaker id) and the same speaker id maps to the same voice in every asset.
- speech only: VAD (silero ONNX) finds speech; non-speech is kept (``nonspeech_gain_db`` = 0) or
  attenuated. Segments are padded (``pad_s``) so word edges are never left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from anon_core.schema import SchemaError, check_choices

Method = Literal["resynth", "world", "mcadams", "pitch", "none"]
VadBackend = Literal["auto", "silero", "webrtc", "energy", "none"]
SpeakerBackend = Literal["auto", "single", "resemblyzer", "pyannote"]
METHODS: tuple[str, ...] = get_args(Method)
DEFAULT_SPEECH_LEVEL_DBFS = -26.0  # the output's speech level (a recording level is a speaker cue, RESULTS.md)
VAD_BACKENDS: tuple[str, ...] = get_args(VadBackend)
SPEAKER_BACKENDS: tuple[str, ...] = get_args(SpeakerBackend)


@dataclass
class AudioSettings:
    """How audio assets (and, when enabled, the audio tracks of videos) are anonymized.

    enabled: transform voices in audio files (False: decode/re-encode only, i.e. audio passes through).
    anonymize_video_audio: also transform the audio tracks of videos (off: the video code copies them bit-exact).
    method: resynth (recognise the words, speak them again in one synthetic voice: anon_core/audio/resynth.py) |
        world | mcadams | pitch (plain pitch shift, a weak baseline kept for comparison) | none.
    tts_voice: method resynth: the eSpeak NG voice every speaker is replaced by (the same for all assets).
    tts_rate_wpm: method resynth: one speaking rate for every phrase (words per minute, 80-450; a phrase runs on
        into the pause after it and is compressed only where it would reach the next one); 0: each phrase is
        fitted into its original span (the rate then follows the speaker's, a measurable speaker cue).
    tts_phrase_gap_s: method resynth: a pause at least this long starts a new synthesized phrase (shorter pauses
        are not kept: a speaker's pausing pattern, spoken as many short phrases, was a speaker cue, RESULTS.md).
    vad: auto (silero, else webrtc, else energy) | silero | webrtc | energy | none (treat everything as speech).
    vad_threshold: speech probability threshold for silero.
    pad_s: seconds added on both sides of each speech segment before transforming.
    min_speech_s / min_silence_s: drop shorter speech runs / merge across shorter pauses.
    nonspeech_gain_db: gain applied outside speech (0: kept; -inf-like values such as -120: muted).
    speech_level_dbfs: negative: scale the whole output so that its speech sits at this RMS level (dBFS), which
        hides the recording level, itself a cue that links assets of one speaker; 0: keep the input's level.
    speakers: auto (resemblyzer when installed, else single) | single | resemblyzer | pyannote.
    pyannote_model: local path of a pyannote pipeline (config.yaml folder); required for speakers=pyannote.
    max_speakers / speaker_threshold: clustering of speaker embeddings (cosine distance threshold).
    key_env: name of the environment variable holding the secret key (never stored in config or audit).
    key_scope: speaker (same key + speaker id -> same voice in every asset) | asset (also mixes in the input hash).
    f0_range_hz: range of target median F0 (log-uniform draw); min_shift_semitones: at least this far from the source.
    formant_range: range of the spectral-envelope warp factor (drawn in the direction of the pitch change).
    mcadams_range: McAdams coefficient range (method mcadams; method world uses it as an extra envelope warp).
    eq_db: method world: amplitude (dB) of a random smooth curve added to the spectral envelope per speaker.
    eq_terms: number of cosine terms of that curve (more terms: finer, less speaker-like colouring).
    warp_pieces: method world: amplitude of a random piecewise-linear frequency warp (displacement of each of
        `warp_knots` knots, as a fraction of a mel-like axis; 0: off). Every formant region moves by its own amount.
    formant_drift: method world: relative amplitude of a slow random modulation of the formant factor over time
        (0: off), at a rate drawn from `drift_hz`.
    envelope_flatten: method world: fraction (0-1) of the speaker's long-term spectral-envelope detail (mean
        log-envelope minus its tilt) removed before warping.
    pitch_semitones: shift for method pitch.
    mute_ranges: [[start_s, end_s], ...] to silence (or beep); mute_ranges_file: a file with more (see ranges.py);
        mute_words: with a word-level transcript as mute_ranges_file, the words to mute (e.g. names).
    mute_mode: silence | beep; beep_hz: beep frequency.
    asr_bleep: recognise the words (Whisper base, anon_core/audio/asr.py) and mute those in mute_words and, with
        bleep_numbers, every number (off by default; needs the `asr` extra or asr_model).
    asr_model: a local CTranslate2 Whisper folder to use instead of the packaged Whisper base.
    bit_rate: encoder bit rate for lossy formats (0: about the input's).
    max_duration_s: longer assets are refused (the whole track is held in memory as float32).
    """

    enabled: bool = True
    anonymize_video_audio: bool = False
    method: Method = "world"
    tts_voice: str = "en-us"
    tts_rate_wpm: int = 175
    tts_phrase_gap_s: float = 2.0
    vad: VadBackend = "auto"
    vad_threshold: float = 0.5
    pad_s: float = 0.2
    min_speech_s: float = 0.1
    min_silence_s: float = 0.3
    nonspeech_gain_db: float = 0.0
    speech_level_dbfs: float = DEFAULT_SPEECH_LEVEL_DBFS
    speakers: SpeakerBackend = "auto"
    pyannote_model: str = ""
    max_speakers: int = 8
    speaker_threshold: float = 0.35
    key_env: str = "ANON_VOICE_KEY"
    key_scope: Literal["speaker", "asset"] = "speaker"
    f0_range_hz: list[float] = field(default_factory=lambda: [85.0, 260.0])
    min_shift_semitones: float = 6.0
    formant_range: list[float] = field(default_factory=lambda: [1.3, 1.5])
    mcadams_range: list[float] = field(default_factory=lambda: [0.6, 0.75])
    eq_db: float = 10.0
    eq_terms: int = 8
    warp_pieces: float = 0.0
    warp_knots: int = 4
    formant_drift: float = 0.0
    envelope_flatten: float = 0.0
    drift_hz: list[float] = field(default_factory=lambda: [0.2, 0.6])
    pitch_semitones: float = 4.0
    mute_ranges: list[list[float]] = field(default_factory=list)
    mute_ranges_file: str = ""
    mute_words: list[str] = field(default_factory=list)
    mute_mode: Literal["silence", "beep"] = "silence"
    asr_bleep: bool = False
    bleep_numbers: bool = True
    asr_model: str = ""
    beep_hz: float = 1000.0
    bit_rate: int = 0
    max_duration_s: float = 4 * 3600.0

    def __post_init__(self) -> None:
        check_choices(self)
        if self.tts_rate_wpm and not 80 <= self.tts_rate_wpm <= 450:
            raise SchemaError("tts_rate_wpm", f"must be 0 or in [80, 450]; got {self.tts_rate_wpm!r}")
        if not self.tts_phrase_gap_s > 0:
            raise SchemaError("tts_phrase_gap_s", f"must be > 0; got {self.tts_phrase_gap_s!r}")
        if not (0 <= self.eq_terms <= 16 and 1 <= self.warp_knots <= 8 and self.warp_pieces >= 0
                and 0 <= self.formant_drift < 0.5 and 0 <= self.envelope_flatten <= 1):
            raise SchemaError("eq_terms/warp_knots/warp_pieces/formant_drift/envelope_flatten",
                              "need 0 <= eq_terms <= 16, 1 <= warp_knots <= 8, warp_pieces >= 0, "
                              "0 <= formant_drift < 0.5, 0 <= envelope_flatten <= 1")
        for name in ("f0_range_hz", "formant_range", "mcadams_range", "drift_hz"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] <= 0 or lo_hi[1] < lo_hi[0]:
                raise SchemaError(name, f"must be [low, high] with 0 < low <= high; got {list(lo_hi)}")
        for i, rng in enumerate(self.mute_ranges):
            if len(rng) != 2 or rng[1] < rng[0] or rng[0] < 0:
                raise SchemaError(f"mute_ranges[{i}]",
                                  f"bad range {list(rng)}: want [start_s, end_s], 0 <= start <= end")

    def public_params(self) -> dict:
        """The parameters that go into the audit (everything that shapes the output; never the key)."""
        keys = ("method", "tts_voice", "tts_rate_wpm", "tts_phrase_gap_s", "vad", "vad_threshold", "pad_s",
                "nonspeech_gain_db", "speech_level_dbfs", "speakers", "key_scope", "f0_range_hz",
                "min_shift_semitones", "formant_range", "mcadams_range", "eq_db", "eq_terms", "warp_pieces",
                "warp_knots", "formant_drift", "drift_hz", "envelope_flatten", "pitch_semitones", "mute_mode",
                "asr_bleep", "bleep_numbers")
        return {k: getattr(self, k) for k in keys}
