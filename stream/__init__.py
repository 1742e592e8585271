"""The streaming core: audio, features, model assembly, sessions and caption events. No I/O loop here."""
