"""Small shared pieces: the user-facing error, progress/cancel, atomic files, the CSV writer, optional extras."""
