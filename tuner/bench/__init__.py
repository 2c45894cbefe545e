"""Benchmarks of tuner against the plain PyTorch loops a user would write; nothing else imports it."""
