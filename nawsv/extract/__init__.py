"""Stage 5: speaker embeddings of Kaldi data dirs to Kaldi ark/scp (whole-utterance and N-segment)."""
