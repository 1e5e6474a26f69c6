"""Device profiles as data: one TOML file per board or phone. Adding a board is adding a file."""
