"""Data handling: Kaldi dirs and lists, audio I/O, corpora, augmentation, samplers."""
