"""Voice: speech to text and text to intent."""
