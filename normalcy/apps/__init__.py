"""Entry points around the library: the CLI, the HTTP service, benchmarks, ONNX export, distributed runs and the
demo. Apps import the library; the library never imports apps (tests/test_layout.py checks it)."""
