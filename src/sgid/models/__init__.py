"""Model loading: real checkpoints by hub id or local path, and the built-in tiny random-weight preset."""
