"""Tests of fedsegnet.ledger."""
