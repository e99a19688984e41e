"""Encryption at rest: the on-disk format of encrypted blobs."""
