"""Export and serving of trained models: `export_hf` writes a checkpoint as a Hugging Face directory."""
