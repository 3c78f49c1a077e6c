"""How `gptkit sample` looks: streamed text, one escaped line per result (--lines), or one JSON
object per sample (--json) on stdout; the stats line for stderr. It computes nothing."""

from __future__ import annotations

import json
import sys
from typing import Any

SEPARATOR = "---------------"  # between the samples of one prompt in plain text output (as nanoGPT)


class Printer:
    """Writes results to stdout: streamed text, --lines (one escaped line each), or --json lines."""

    def __init__(self, mode: str, echo: bool, out: Any = None) -> None:
        self.mode, self.echo = mode, echo  # mode: text | lines | json
        self.out = out or sys.stdout.buffer
        self.ends_newline = True

    def write(self, text: str) -> None:
        if text:
            self.out.write(text.encode("utf-8"))
            self.out.flush()
            self.ends_newline = text.endswith("\n")

    def _shown(self, text: str) -> str:
        # --lines keeps every result on one line: backslash and newline are escaped as \\ and \n
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r") if self.mode == "lines" else text

    def begin(self, prompt: str) -> None:
        if self.mode != "json" and self.echo:
            self.write(self._shown(prompt))

    def on_text(self, row: int, text: str) -> None:
        if row == 0 and self.mode != "json":  # the first sample streams; the others print when all are done
            self.write(self._shown(text))

    def end(self, result: Any, prompt_index: int) -> None:
        if self.mode == "json":
            for s in result.samples:
                self.write(json.dumps(sample_record(result, s, prompt_index), ensure_ascii=False) + "\n")
            return
        lines = self.mode == "lines"  # escaped results hold no newline: end each one with exactly one
        self._end_line(always=lines)
        for s in result.samples[1:]:
            if not lines:
                self.write(SEPARATOR + "\n")
            self.write(self._shown((result.prompt if self.echo else "") + s.text))
            self._end_line(always=lines)

    def _end_line(self, always: bool) -> None:
        if always or not self.ends_newline:
            self.write("\n")


def sample_record(result: Any, s: Any, prompt_index: int) -> dict[str, Any]:
    """One JSON line: a sample with its prompt, ids, log-probabilities, finish reason and timing."""
    return {
        "prompt_index": prompt_index, "sample": s.index, "prompt": result.prompt, "text": s.text,
        "finish_reason": s.finish_reason, "token_ids": s.token_ids,
        "logprobs": [round(x, 5) for x in s.logprobs], "prompt_tokens": result.prompt_tokens,
        "seed": s.seed,
        "timing": {"seconds": round(result.seconds, 4),
                   "first_token_seconds": None if result.first_token_seconds is None
                   else round(result.first_token_seconds, 4),
                   "tokens_per_second": round(result.tokens_per_second, 1)},
    }


def stats_line(result: Any) -> str:
    n = len(result.samples)
    made = f"{result.generated_tokens} tokens" + (f" ({n} samples)" if n > 1 else "")
    ttft = "-" if result.first_token_seconds is None else f"{result.first_token_seconds * 1000:.0f} ms"
    return (f"stats: prompt {result.prompt_tokens} tokens | generated {made} | "
            f"{result.tokens_per_second:.1f} tokens/s | first token {ttft} | {result.seconds:.2f} s")
