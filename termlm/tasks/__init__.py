"""Tasks: pure functions from a record to prompt messages, and from engine results to fields.

A task never reads files or writes output; the runner (termlm.runner) does that.
"""
