"""Differentiable image operations: DSA augmentation, ZCA whitening."""
