"""Quantization: the method registry (PTQ, packed N-bit), QAT, what a precision setting means, model sizes."""
