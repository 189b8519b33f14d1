"""Model tests: the shared contract suite and baseline-specific checks."""
