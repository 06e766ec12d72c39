"""Hook implementations of analyzer_onnx (placeholder until the analyzer lands)."""
