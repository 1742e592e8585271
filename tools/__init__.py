"""The command line and what it runs besides the service: offline transcription, caption formats,
scoring, and the client tools (replay, soak, listen) with the simulated real-time clock."""
