"""anon_core: the anonymization pipeline core (pure library: no Ray, HTTP or Hydra)."""

__version__ = "0.1.0"
