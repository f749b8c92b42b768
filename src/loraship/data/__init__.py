"""Data stage: load and validate JSONL, dedupe, mix new rows with replay, seeded splits that never leak."""
