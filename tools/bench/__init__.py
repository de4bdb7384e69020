"""`make bench`: Janus against the same fake upstream sent to directly; see ``__main__``."""
