"""The Hugging Face GPT-2 format: names, config and tokenizer files (`gpt2`), and `gptkit convert` in
both directions (`convert`)."""
