"""Benchmarks of tuner against the plain PyTorch loops a user would write; nothing else imports it.

`suite` runs the chosen items and is the command line; `plain` holds the baselines, `tuner_side` runs
`train()` as a user does, and `training`, `predict`, `gpu` and `cpu_settings` are the items.
"""
