"""Where object data lives: one directory tree per region."""
