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


class TimedOut(AssetError):
    """The asset ran past `limits.asset_timeout_s`."""

    code = "timeout"


class AnalysisFailed(AssetError):
    """A detector raised on a frame and `on_analysis_error` is `fail`: nothing is published."""

    code = "analysis_error"


class ResidualRisk(AssetError):
    """The residual check still found something after masking and `residual.action` is `fail`."""

    code = "residual_risk"
