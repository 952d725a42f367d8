"""Export: a stage's model in a format other runtimes load (ONNX for onnxruntime, a plain transformers folder), each
verified against trainopt's own model and measured in its own runtime (docs/methods/export.md)."""
