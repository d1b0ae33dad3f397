"""Pure functions over ``onnx.ModelProto``: indexing, residual-block discovery, INT8 proofs."""
