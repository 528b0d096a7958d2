"""Media probing, decoding and encoding."""
