"""How each command looks: the only code in gptkit that writes to the terminal."""
