"""Losses: hint (layer-wise MSE), E-APN (extended angular prototypical), AAM-softmax with inter-top-k."""
