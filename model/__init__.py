"""Whisper assembled from encoder/ and decoder/, its checkpoint loaders, and the speaker encoder."""
