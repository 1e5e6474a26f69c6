"""The RPC harness: sessions, upload, run, verify, time, report."""
