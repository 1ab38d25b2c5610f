"""One module per command: each parses its options and calls library code, nothing more."""
