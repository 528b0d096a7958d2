"""Video anonymization: streaming decode, batched detection, tracking, masking, encode.

`anonymize_video` is imported lazily so that `anon_core.config` can use `VideoSettings` without
loading PyAV.
"""

from anon_core.video.settings import EncoderSettings, VideoSettings

__all__ = ["EncoderSettings", "VideoSettings", "anonymize_video"]


def __getattr__(name: str):
    if name == "anonymize_video":
        from anon_core.video.anonymize import anonymize_video

        return anonymize_video
    raise AttributeError(name)
