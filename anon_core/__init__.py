"""anon_core: the anonymization pipeline core (pure library: no Ray, HTTP or Hydra).

Importing it turns off every library's telemetry and hub access first (`anon_core.offline`): nothing here talks to
the network unless a configured storage URI asks for it.
"""

from anon_core.offline import go_offline

go_offline()

__version__ = "0.1.0"
