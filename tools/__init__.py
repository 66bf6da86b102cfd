"""Development tools (not part of the image)."""
