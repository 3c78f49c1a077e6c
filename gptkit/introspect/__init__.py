"""What `gptkit inspect` and `gptkit tokenize` compute: a forward pass taken apart (`trace`), FFN-output
neighbours in the training text (`neighbors`), and tokens with their pieces and offsets (`tokens`).
Plain Python results; the CLI renders them."""
