"""vLLM's tokenizer endpoints, behind the key: clients count and budget tokens for the exact model.

`POST /tokenize` takes a raw `prompt` (encoded as `/v1/completions` encodes it) or chat `messages` (with
`tools` and `chat_template_kwargs`, rendered by the model's template exactly as a chat is: the count equals
the chat's `usage.prompt_tokens`) and answers `{"count", "max_model_len", "tokens", "token_strs"}`;
`POST /detokenize` turns `tokens` back into `{"prompt"}`. Qwen's tokenizers add no special tokens of their
own, so `add_special_tokens` changes nothing and is accepted either way, as vLLM takes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import Field

from qwen_chat.chat.admission import with_tools
from qwen_chat.chat.reply_options import Tool
from qwen_chat.chat.surrogates import refuse_non_text
from qwen_chat.engine.model.prompts import TemplateRefused
from qwen_chat.errors import ErrorCode, Refusal
from qwen_chat.http.bearer import PrincipalDep
from qwen_chat.http.openai_api import check_request
from qwen_chat.http.openai_completions import checked_ids, prompt_ids
from qwen_chat.http.openai_schema import Body, ChatMessage, ChatTemplateArgs, as_message
from qwen_chat.service import Service, ServiceDep

router = APIRouter(tags=["tokenizer"])


class TokenizeRequest(Body):
    """vLLM's `TokenizeCompletionRequest` (`prompt`) or `TokenizeChatRequest` (`messages`), one of them."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    chat_template_kwargs: ChatTemplateArgs | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None
    return_token_strs: bool = False


class DetokenizeRequest(Body):
    model: str | None = None
    tokens: list[int]


def _refuse(message: str, param: str) -> Refusal:
    return Refusal(ErrorCode.BAD_REQUEST, message, param=param, status=400)


def _check_model(service: Service, model: str | None) -> None:
    if model is not None:
        check_request(service.settings, model, None)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, service: ServiceDep, _principal: PrincipalDep) -> dict[str, Any]:
    _check_model(service, body.model)
    prompts = service.admission.prompts()
    if (body.prompt is None) == (body.messages is None):
        raise _refuse("send either prompt or messages", "prompt")
    if body.prompt is not None:
        ids = await prompt_ids(service, body.prompt)
    else:
        if not body.add_generation_prompt:
            raise _refuse("only add_generation_prompt: true is served", "add_generation_prompt")
        kwargs = (
            body.chat_template_kwargs.model_dump(exclude_none=True) if body.chat_template_kwargs else None
        )
        listed = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
        args = with_tools(prompts, kwargs, listed)
        messages = [as_message(m) for m in body.messages or []]
        refuse_non_text(messages, "messages", "a message")
        try:
            ids = await asyncio.to_thread(prompts.encode_chat, messages, args)
        except TemplateRefused as exc:
            raise _refuse(str(exc), "messages") from None
    strs = prompts.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": prompts.context_length, "tokens": ids, "token_strs": strs}


@router.post("/detokenize")
async def detokenize(
    body: DetokenizeRequest, service: ServiceDep, _principal: PrincipalDep
) -> dict[str, str]:
    _check_model(service, body.model)
    prompts = service.admission.prompts()
    tokens = checked_ids(prompts, body.tokens, "tokens")
    return {"prompt": await asyncio.to_thread(prompts.tokenizer.decode, tokens)}
