"""Bridges to the tools researchers already use: experiment trackers and PyTorch Lightning.

Each module imports its tool on first use and names the extra to install when it is missing.
"""
