"""The fixtures/ directory holds source the checker reads, never tests to run."""

collect_ignore = ["fixtures"]
