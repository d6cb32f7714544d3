"""Feature evolution across checkpoints: probe statistics, unit matching, CKA, and the series.

A timeline is a view over units with content keys like any others: each checkpoint's weight
digest names its probe (and render) units, so adding a checkpoint computes only its own units.
"""
