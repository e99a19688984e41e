"""The `datacoffer` command: the server and the operator's admin commands."""
