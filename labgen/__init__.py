"""labgen: containerized mail-flow labs that reproduce Exchange Online misconfigurations."""

__version__ = "0.1.0"
