"""`python -m gptkit` (and `torchrun -m gptkit train ...`)."""

from gptkit.cli import main

if __name__ == "__main__":
    main()
