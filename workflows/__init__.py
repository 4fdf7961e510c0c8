"""The pipelines users call from Python and the CLI wires: one run, a bench grid, reports."""
