"""python -m training: persona data -> LoRA fine-tune -> GGUF -> Modelfile -> eval."""
