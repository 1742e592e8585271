"""The async service shell and command-line tools."""
