"""Import of external checkpoints (Hugging Face BERT...) into our models' parameter dicts."""
