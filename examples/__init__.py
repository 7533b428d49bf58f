"""Example scenarios, shipped in the wheel as the data package labgen.examples (pyproject.toml):
`labgen examples` lists them, `labgen up example:NAME` runs one."""
