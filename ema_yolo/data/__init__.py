"""Dataset tools: generated detection sets for tests and the demo."""
