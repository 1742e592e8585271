"""Whisper as a network and its weights: shared layers, the assembled model, checkpoint loaders."""
