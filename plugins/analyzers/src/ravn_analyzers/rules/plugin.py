"""Hook implementations of analyzer_rules (placeholder until the analyzer lands)."""
