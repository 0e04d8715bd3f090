"""One run: its frozen config and presets, its directory (Run), its checkpoint."""
