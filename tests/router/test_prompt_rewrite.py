"""Prompt rewriting against a real OpenAI-compatible chat server on 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from router_fakes import FakeChatServer, FakeWorker, router_client, serve

from qwen_image_router.metrics import RouterMetrics
from qwen_image_router.prompt_rewrite import (
    SYSTEM_PROMPT_EN,
    SYSTEM_PROMPT_ZH,
    build_rewriter,
    has_cjk,
    system_prompt_for,
)
from qwen_image_router.settings import RouterSettings

SECRET_PROMPT = "a blue owl named Zebulon reading"


def rewrite_settings(tmp_path: Path, base_url: str, **overrides: object) -> RouterSettings:
    values: dict[str, object] = {
        "worker_urls": ["http://127.0.0.1:9"],
        "image_output_dir": tmp_path,
        "enable_prompt_rewrite": True,
        "openai_base_url": base_url,
        "openai_api_key": "sk-test",
        "openai_model": "rewriter-1",
        "prompt_rewrite_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return RouterSettings.model_validate(values)


def failures(metrics: RouterMetrics) -> float | None:
    return metrics.registry.get_sample_value("qwen_image_router_prompt_rewrite_failures_total")


def test_language_is_chosen_by_cjk_characters() -> None:
    assert has_cjk("一只可爱的小猫") and has_cjk("a cat named 小花")
    assert has_cjk("「看板」")
    assert not has_cjk("a cute cat, sitting in a garden — 4k")
    assert system_prompt_for("一只小猫") == SYSTEM_PROMPT_ZH
    assert system_prompt_for("a kitten") == SYSTEM_PROMPT_EN
    assert has_cjk(SYSTEM_PROMPT_ZH) and not has_cjk(SYSTEM_PROMPT_EN)


def test_rewriting_is_off_unless_enabled(tmp_path: Path) -> None:
    settings = RouterSettings(worker_urls=["http://127.0.0.1:9"], image_output_dir=tmp_path)
    assert build_rewriter(settings, RouterMetrics()) is None


@pytest.mark.parametrize(
    ("prompt", "system"),
    [("一只可爱的小猫坐在花园里", SYSTEM_PROMPT_ZH), ("a cat in a garden", SYSTEM_PROMPT_EN)],
)
async def test_the_rewrite_uses_the_prompts_language_and_returns_the_answer(
    tmp_path: Path, prompt: str, system: str
) -> None:
    chat = FakeChatServer(reply='  "A detailed picture of a cat."  ')
    metrics = RouterMetrics()
    async with serve(chat.app) as url:
        rewriter = build_rewriter(rewrite_settings(tmp_path, f"{url}/v1"), metrics)
        assert rewriter is not None
        rewritten = await rewriter.rewrite(prompt)
        await rewriter.close()
    assert rewritten == "A detailed picture of a cat."
    assert chat.system_prompt() == system
    assert chat.requests[0]["model"] == "rewriter-1"
    assert {"role": "user", "content": prompt} in chat.requests[0]["messages"]
    assert chat.headers[0]["authorization"] == "Bearer sk-test"
    assert failures(metrics) == 0


@pytest.mark.parametrize("mode", ["error", "slow", "empty"])
async def test_a_failed_rewrite_gives_none_counts_and_logs_without_the_prompt(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    chat = FakeChatServer()
    chat.mode = mode
    metrics = RouterMetrics()
    async with serve(chat.app) as url:
        settings = rewrite_settings(tmp_path, f"{url}/v1", prompt_rewrite_timeout_seconds=0.3)
        rewriter = build_rewriter(settings, metrics)
        assert rewriter is not None
        with caplog.at_level(logging.WARNING, logger="qwen_image_router.prompt_rewrite"):
            assert await rewriter.rewrite(SECRET_PROMPT) is None
        await rewriter.close()
    assert len(chat.requests) == 1  # max_retries=0: one call, no retries
    assert failures(metrics) == 1
    assert "prompt rewrite failed" in caplog.text
    assert "Zebulon" not in caplog.text


async def test_an_unreachable_chat_api_falls_back(tmp_path: Path) -> None:
    metrics = RouterMetrics()
    rewriter = build_rewriter(rewrite_settings(tmp_path, "http://127.0.0.1:9/v1"), metrics)
    assert rewriter is not None
    assert await rewriter.rewrite("a cat") is None
    await rewriter.close()
    assert failures(metrics) == 1


async def test_the_router_sends_the_rewritten_prompt_and_returns_it(tmp_path: Path) -> None:
    chat = FakeChatServer(reply="A small orange kitten on a sunny garden path, soft light.")
    worker = FakeWorker()
    async with serve(chat.app) as chat_url, serve(worker.app) as worker_url:
        settings = rewrite_settings(tmp_path, f"{chat_url}/v1", worker_urls=[worker_url])
        async with router_client(settings) as client:
            response = await client.post(
                "/v1/images/generations",
                json={"prompt": "kitten", "n": 2, "size": "256x256"},
            )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["revised_prompt"] for item in data] == [chat.reply, chat.reply]
    assert worker.jobs[0].prompt == chat.reply


async def test_the_router_uses_the_original_prompt_when_the_rewrite_fails(
    tmp_path: Path,
) -> None:
    chat = FakeChatServer()
    chat.mode = "error"
    worker = FakeWorker()
    async with serve(chat.app) as chat_url, serve(worker.app) as worker_url:
        settings = rewrite_settings(tmp_path, f"{chat_url}/v1", worker_urls=[worker_url])
        async with router_client(settings) as client:
            response = await client.post(
                "/v1/images/generations", json={"prompt": "kitten", "size": "256x256"}
            )
            metrics = (await client.get("/metrics")).text
    assert response.status_code == 200, response.text
    assert "revised_prompt" not in response.json()["data"][0]
    assert worker.jobs[0].prompt == "kitten"
    assert "qwen_image_router_prompt_rewrite_failures_total 1.0" in metrics
