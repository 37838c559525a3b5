"""Pyramid flow-matching sampling: stage schedules, block noise, the t2v/i2v loops."""
