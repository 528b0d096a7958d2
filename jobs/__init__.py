"""Entry points that wrap anon_core: CLI, Ray Data job, validation, service."""
