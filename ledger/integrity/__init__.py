"""Tamper evidence for the ledger: an append-only Merkle log in the style of RFC 9162.

``ledger.integrity.merkle`` holds the pure algorithms (tree hashes, compact frontiers,
inclusion and consistency proofs and their verification); it touches no database.
"""
