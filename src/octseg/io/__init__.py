"""Reading and writing files: output folders that protect a user's files, atomic writes."""
