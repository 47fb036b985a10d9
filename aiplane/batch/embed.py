"""The ``embed`` task: in-process all-MiniLM-L6-v2, or ``/embeddings`` of an OpenAI-compatible API.

In-process, rows go to the model in batches of ``AIPLANE_BATCH_SIZE``, each text
tokenized once (the same encodings give the token check and the vectors), so a shard
runs about as fast as a plain loop over ``MiniLMEmbedder.embed``. The tokenizer
truncates at the model's 256 tokens; a truncated text would be embedded from its first
256 tokens only, so it is a bad row instead, with its full count.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING, Any

from aiplane.batch.errors import ShardFailed
from aiplane.batch.openai_client import OpenAIClient, RowRejected
from aiplane.batch.ordered import in_order
from aiplane.batch.rows import ENCODER, BadRow, Item
from aiplane.batch.tasks import Outcome, batched

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from aiplane.engines.minilm import MiniLMEmbedder


def embedding_line(item: Item, vector: list[float]) -> str:
    return ENCODER.encode({"id": item.id, "row": item.row, "embedding": vector})


class LocalEmbed:
    """One :class:`MiniLMEmbedder` for the whole shard."""

    def __init__(self, embedder: MiniLMEmbedder, batch_size: int) -> None:
        self.embedder, self.batch_size = embedder, batch_size
        self._counter: Tokenizer | None = None

    def full_counts(self, texts: list[str]) -> list[int]:
        """Tokens without truncation (special tokens included), for the texts that were cut."""
        if self._counter is None:
            from tokenizers import Tokenizer

            self._counter = Tokenizer.from_str(self.embedder.tokenizer.to_str())
            self._counter.no_truncation()
        return [len(e.ids) for e in self._counter.encode_batch(texts)]

    def embed_chunk(self, chunk: list[Item | BadRow]) -> list[Outcome]:
        good = [item for item in chunk if isinstance(item, Item)]
        encodings = self.embedder.encode([item.text for item in good])
        cut = [k for k, enc in enumerate(encodings) if enc.overflowing]
        refused: dict[int, BadRow] = {}
        if cut:
            limit = self.embedder.max_tokens
            for k, n in zip(cut, self.full_counts([good[k].text for k in cut]), strict=True):
                refused[k] = BadRow(good[k].row, good[k].id, f"{n} tokens, the model's limit is {limit}")
        keep = [k for k in range(len(good)) if k not in refused]
        vectors = self.embedder.embed_encodings([encodings[k] for k in keep]) if keep else None
        lines: dict[int, Outcome] = dict(refused)
        for j, k in enumerate(keep):
            assert vectors is not None
            lines[k] = embedding_line(good[k], vectors[j].tolist())
        results = iter(lines[k] for k in range(len(good)))
        return [item if isinstance(item, BadRow) else next(results) for item in chunk]

    async def outcomes(self, items: Iterator[Item | BadRow]) -> AsyncGenerator[Outcome, None]:
        for chunk in batched(items, self.batch_size):
            for outcome in self.embed_chunk(chunk):
                yield outcome


class RemoteEmbed:
    """Batches to ``{url}/embeddings``; a refused batch is split until the refused row is alone."""

    def __init__(self, client: OpenAIClient, model: str, batch_size: int, concurrency: int) -> None:
        self.client, self.model = client, model
        self.batch_size, self.concurrency = batch_size, concurrency

    async def _embed(self, items: list[Item]) -> dict[int, Outcome]:
        if not items:
            return {}
        body = {"model": self.model, "input": [i.text for i in items], "encoding_format": "float"}
        try:
            answer = await self.client.post("/embeddings", body)
        except RowRejected as exc:
            if len(items) == 1:
                return {items[0].row: BadRow(items[0].row, items[0].id, f"the server refused it: {exc}")}
            half = len(items) // 2
            return await self._embed(items[:half]) | await self._embed(items[half:])
        vectors = _vectors(self.client.base_url, answer, len(items))
        return {item.row: embedding_line(item, v) for item, v in zip(items, vectors, strict=True)}

    async def _chunk(self, chunk: list[Item | BadRow]) -> list[Outcome]:
        lines = await self._embed([i for i in chunk if isinstance(i, Item)])
        return [i if isinstance(i, BadRow) else lines[i.row] for i in chunk]

    async def outcomes(self, items: Iterator[Item | BadRow]) -> AsyncGenerator[Outcome, None]:
        async with self.client:
            jobs = (self._chunk(chunk) for chunk in batched(items, self.batch_size))
            async for outcomes in in_order(jobs, self.concurrency):
                for outcome in outcomes:
                    yield outcome


def _vectors(url: str, answer: dict[str, Any], expected: int) -> list[list[float]]:
    data = answer.get("data")
    if not isinstance(data, list) or len(data) != expected:
        raise ShardFailed(
            f"POST {url}/embeddings: expected {expected} embeddings in 'data', got {data!r:.200}"
        )
    try:
        ordered = sorted(data, key=lambda d: int(d.get("index", 0)))
        vectors = [d["embedding"] for d in ordered]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ShardFailed(f"POST {url}/embeddings: malformed embedding in the answer ({exc})") from exc
    if not all(isinstance(v, list) for v in vectors):
        raise ShardFailed(f"POST {url}/embeddings: embeddings are not float lists (base64 answered?)")
    return vectors
