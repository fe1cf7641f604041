"""Networks: SSL student (WavLM, HuBERT, wav2vec 2.0) with adapters, frozen teacher, warm-up head, ECAPA-TDNN."""
