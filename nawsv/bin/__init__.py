"""Stage entry points: ``python -m nawsv.bin.<stage> --help``."""
