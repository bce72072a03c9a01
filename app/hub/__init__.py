"""The Hugging Face Hub edge: model ids, the config fetcher with its on-disk cache, and the remote-code check."""
