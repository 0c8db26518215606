"""Reliability and security suite: crashes, S3 faults, local faults, hostile input, secrets, concurrency.

Every scenario records its row of docs/RELIABILITY.md (see report.py)."""
