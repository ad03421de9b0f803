"""``xplain``: the command-line client of the explanation service."""
