"""anomalygpt-edge export wing: runs once on a workstation (torch, transformers, onnx, gguf)."""
