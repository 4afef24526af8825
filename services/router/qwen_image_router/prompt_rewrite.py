"""Optional prompt enrichment through an OpenAI-compatible chat API.

As in Qwen-Image's own prompt tooling, the instructions are written in the prompt's
language (Chinese for prompts with CJK characters, English otherwise), so the rewrite
stays in that language. The rewrite is best effort: on any failure the original prompt
is used, counted and logged without the prompt.
"""

from __future__ import annotations

import asyncio
import logging
import re

from openai import APIStatusError, AsyncOpenAI

from qwen_image_common.contract import MAX_PROMPT_CHARS
from qwen_image_router.metrics import RouterMetrics
from qwen_image_router.settings import RouterSettings

logger = logging.getLogger(__name__)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")

SYSTEM_PROMPT_EN = """\
You turn short requests for pictures into prompts for a text-to-image model.
Rewrite the user's prompt into one detailed visual description of the picture:
subject, setting, composition, lighting, colours, style and mood.
Keep everything the user asked for and do not change its meaning or add a new subject.
Any text the user wants shown in the picture (usually in quotes) must stay exactly as
written, in its quotes and its language.
Answer with the rewritten prompt only: no preface, no explanation, no quotes around it,
at most about 200 words, in English."""

SYSTEM_PROMPT_ZH = """\
你的任务是把用户简短的画面需求改写成适合文生图模型的提示词。
请把用户的提示词扩写成一段细致的画面描述：主体、场景、构图、光线、色彩、风格和氛围。
保留用户要求的全部内容，不改变原意，也不要添加新的主体。
用户希望出现在画面中的文字（通常在引号里）必须原样保留，包括引号和原来的语言。
只输出改写后的提示词：不要开场白，不要解释，不要在外面加引号，不超过约三百字，使用中文。"""


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def system_prompt_for(prompt: str) -> str:
    return SYSTEM_PROMPT_ZH if has_cjk(prompt) else SYSTEM_PROMPT_EN


def _clean(text: str) -> str:
    text = text.strip()
    for left, right in (('"', '"'), ("“", "”"), ("「", "」")):
        if len(text) > 1 and text.startswith(left) and text.endswith(right):
            text = text[1:-1].strip()
    return text


class PromptRewriter:
    """Asks a chat model for a richer prompt; never fails the request it serves."""

    def __init__(
        self, client: AsyncOpenAI, model: str, timeout_seconds: float, metrics: RouterMetrics
    ) -> None:
        self._client = client
        self._model = model
        self._timeout_seconds = timeout_seconds
        self._metrics = metrics

    async def rewrite(self, prompt: str) -> str | None:
        """The rewritten prompt, or None when the original has to do."""
        try:
            async with asyncio.timeout(self._timeout_seconds):
                completion = await self._client.chat.completions.create(
                    model=self._model,
                    messages=[
                        {"role": "system", "content": system_prompt_for(prompt)},
                        {"role": "user", "content": prompt},
                    ],
                    temperature=0.7,
                )
            content = completion.choices[0].message.content if completion.choices else None
            rewritten = _clean(content or "")
            if not rewritten:
                raise ValueError("empty answer")
            if len(rewritten) > MAX_PROMPT_CHARS:
                raise ValueError(f"answer longer than {MAX_PROMPT_CHARS} characters")
        except Exception as exc:
            self._metrics.prompt_rewrite_failures.inc()
            # Only the error's type and status: chat APIs may echo the prompt in messages.
            logger.warning(
                "prompt rewrite failed (%s%s); using the original prompt",
                type(exc).__name__,
                f" {exc.status_code}" if isinstance(exc, APIStatusError) else "",
            )
            return None
        return rewritten

    async def close(self) -> None:
        await self._client.close()


def build_rewriter(settings: RouterSettings, metrics: RouterMetrics) -> PromptRewriter | None:
    if not settings.enable_prompt_rewrite or settings.openai_model is None:
        return None
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "unused"
    client = AsyncOpenAI(
        api_key=key,
        base_url=settings.openai_base_url,
        max_retries=0,
        timeout=settings.prompt_rewrite_timeout_seconds,
    )
    return PromptRewriter(
        client, settings.openai_model, settings.prompt_rewrite_timeout_seconds, metrics
    )
