"""Scoring: cosine, segment-pair and AS-norm scores; EER and minDCF; results tables."""
