"""Networks: WavLM student with adapters, frozen teacher, warm-up head, ECAPA-TDNN back-end."""
