"""From checkpoint to device: ONNX export of every precision, checked in ONNX Runtime, and prediction
on image files (`python -m eurosat.export`, `python -m eurosat.predict`; docs/deploy.md).

The ONNX packages are the optional extra `deploy` (`pip install ".[deploy]"`): they are imported
only inside the functions that need them, so the rest of the package, and `--help`, work without it.
"""
