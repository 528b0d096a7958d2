"""Errors that fail one asset with a clear one-line message (the job goes on)."""


class AssetError(Exception):
    """An asset cannot be processed safely; the message goes to the audit row and the console."""

    code = "asset_error"


class UnsupportedMedia(AssetError):
    code = "unsupported"


class CorruptMedia(AssetError):
    code = "corrupt"


class TooLarge(AssetError):
    code = "too_large"
