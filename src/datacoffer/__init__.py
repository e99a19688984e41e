"""Data Coffer: a self-hosted Cloud Data Coffer Service (CDCS) server."""

__version__ = "0.1.0"
SERVER_NAME = "DataCoffer"
