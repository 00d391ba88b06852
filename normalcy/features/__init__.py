"""Features: image backbones (EfficientNet-Lite, local weights), patch-feature extraction and preprocessing, and
MiniLM text embeddings; imports only errors."""
