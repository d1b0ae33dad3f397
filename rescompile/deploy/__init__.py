"""Deployment: the bundle (one file for a device), the device-side flow, and SSH to one device or a fleet.

``bundle`` and ``device`` import neither torch nor onnxsim on the device-side path (reading a
bundle, building and validating): a Jetson image has TensorRT, numpy and onnx, rarely PyTorch.
"""
