"""Audio anonymization: decode, VAD, speakers, voice transformation, mute ranges, encode.

Heavy imports (PyAV, pyworld, torch) happen lazily so `anon_core.config` can import `AudioSettings` cheaply.
"""

from anon_core.audio.settings import AudioSettings

__all__ = ["AudioSettings", "anonymize_audio", "anonymize_waveform"]


def __getattr__(name: str):
    if name in ("anonymize_audio", "anonymize_waveform"):
        from anon_core.audio import anonymize

        return getattr(anonymize, name)
    raise AttributeError(name)
