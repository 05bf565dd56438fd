"""The `mae-large` command line."""
