"""The ``generate`` task: one non-streaming ``/chat/completions`` per row, many in flight.

Rows are sent ``AIPLANE_CONCURRENCY`` at a time and written in input order. A row
with a ``messages`` list is sent as those chat messages; otherwise its prompt field
becomes one user message.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

from aiplane.batch.errors import ShardFailed
from aiplane.batch.openai_client import OpenAIClient, RowRejected
from aiplane.batch.ordered import in_order, ready
from aiplane.batch.rows import ENCODER, BadRow, Item
from aiplane.batch.tasks import Outcome

WINDOW_PER_SLOT = 4  # rows started ahead of the oldest unfinished one, per request slot


class Generate:
    def __init__(
        self, client: OpenAIClient, model: str, *, max_tokens: int, temperature: float, concurrency: int
    ) -> None:
        self.client, self.model = client, model
        self.max_tokens, self.temperature, self.concurrency = max_tokens, temperature, concurrency

    def request(self, item: Item) -> dict[str, Any]:
        messages = item.messages if item.messages is not None else [{"role": "user", "content": item.text}]
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": False,
        }

    async def _one(self, item: Item) -> str | BadRow:
        try:
            answer = await self.client.post("/chat/completions", self.request(item))
        except RowRejected as exc:
            return BadRow(item.row, item.id, f"the server refused it: {exc}")
        try:
            choice = answer["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            url = self.client.base_url
            raise ShardFailed(
                f"POST {url}/chat/completions: no choices[0].message in {answer!r:.200}"
            ) from exc
        return ENCODER.encode(
            {
                "id": item.id,
                "row": item.row,
                "output": text,
                "finish_reason": choice.get("finish_reason"),
                "usage": answer.get("usage") or {},
            }
        )

    async def outcomes(self, items: Iterator[Item | BadRow]) -> AsyncGenerator[Outcome, None]:
        async with self.client:
            jobs = (self._one(item) if isinstance(item, Item) else ready(item) for item in items)
            async for outcome in in_order(jobs, self.concurrency * WINDOW_PER_SLOT):
                yield outcome
