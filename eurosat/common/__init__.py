"""Helpers every room may use: atomic files and JSON, output-path checks, the command-line conventions."""
