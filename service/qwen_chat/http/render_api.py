"""vLLM's render endpoints, behind the key unless RENDER_WITHOUT_KEY (llm-d's token producer sends none):
the token ids a request would be prefilled with, without running it. A prefix-aware router (llm-d's precise
prefix-cache scorer) asks them so that the blocks it hashes are the engine's own:
`POST /v1/chat/completions/render` takes a chat completion's body and answers one
`{"request_id", "model", "token_ids"}` (vLLM's `GenerateRequest`, the fields a router reads);
`POST /v1/completions/render` takes a completion's body and answers a list of them, one per prompt (one
prompt per request, as `/v1/completions` takes). The ids are those the request's `usage.prompt_tokens`
counts: the chat's template, tools, `chat_template_kwargs`, its grammar's thinking switch and the dropping of
its oldest turns are the chat's own (`chat/admission.py`); a completion's prompt is encoded as
`/v1/completions` and `/tokenize` encode it.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from qwen_chat.chat.admission import chat_template_args, render_chat, render_prompt
from qwen_chat.chat.reply_options import reply_options
from qwen_chat.http.bearer import RenderPrincipalDep
from qwen_chat.http.openai_api import check_request
from qwen_chat.http.openai_completions import prompt_ids
from qwen_chat.http.openai_schema import ChatCompletionRequest, CompletionRequest, as_message
from qwen_chat.service import Service, ServiceDep

router = APIRouter(prefix="/v1", tags=["openai"])


def _rendered(service: Service, ids: list[int]) -> dict[str, Any]:
    model = service.settings.model_name
    return {"request_id": f"render-{uuid.uuid4().hex}", "model": model, "token_ids": ids}


@router.post("/chat/completions/render")
async def render_chat_completion(
    body: ChatCompletionRequest, service: ServiceDep, _principal: RenderPrincipalDep
) -> dict[str, Any]:
    check_request(service.settings, body.model, body.n)
    tools, choice = body.tools, body.tool_choice
    options = reply_options(tools, choice, body.parallel_tool_calls, body.response_format, None)
    prompts = service.admission.prompts()
    template_args = chat_template_args(prompts, body.template_args(), options)
    messages = [as_message(m) for m in body.messages]
    return _rendered(service, await render_chat(prompts, messages, template_args, "messages"))


@router.post("/completions/render")
async def render_completion(
    body: CompletionRequest, service: ServiceDep, _principal: RenderPrincipalDep
) -> list[dict[str, Any]]:
    check_request(service.settings, body.model, body.n)
    ids = await prompt_ids(service, body.prompt)  # type: ignore[arg-type]
    return [_rendered(service, render_prompt(service.admission.prompts(), ids, "prompt"))]
