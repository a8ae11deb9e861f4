"""Sharing on the Hugging Face Hub: folder checks, the model card, the upload."""
