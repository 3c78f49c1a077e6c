"""Training text to token arrays: where text comes from (`sources`), where it may be cut and whether it
is text at all (`chunks`), the streaming builder and its reuse-or-build front door (`build`), and the
token dataset a training run reads (`dataset`). Nothing here imports torch."""
