"""The CDCS wire protocol over HTTP: a router, thin handlers and the error document."""
