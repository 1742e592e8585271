"""Whisper audio encoder."""
