"""Whisper text decoder, tokenizer and search."""
