"""File formats shared by every layer: Kaldi tables and trial lists, and the records training leaves beside its
outputs (dev metrics, warm-up diagnostics). Depends on nawsv.utils only, so that data preparation, training,
extraction and scoring all read and write them without importing each other (tests/test_layering.py)."""
