"""Bridge to WeSpeaker's own trainer; imported only when used (it needs the .venv-wespeaker environment)."""
