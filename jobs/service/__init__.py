"""Pieces of the REST + WebSocket service (`jobs/serve.py`)."""
