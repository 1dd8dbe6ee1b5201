"""Test helpers shared by the test modules (import as `helpers.<module>`)."""
