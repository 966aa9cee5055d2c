"""A chat template in Qwen3.5's format, for the tiny qwen3_5 and qwen3_5_moe models: written from memory of
the `chat_template` in the Qwen3.5 and Qwen3-Coder model cards and of vLLM's `qwen3_coder` tool parser (no
hub access here), shortened where the wording does not change what a parser or a test sees.

- Tools are listed in the system turn, one JSON object a line inside `<tools></tools>`, followed by the
  instruction block that shows the XML call format ("If you choose to call a function ONLY reply in the
  following format with NO suffix:", then `<tool_call>` / `<function=NAME>` / `<parameter=KEY>`).
- An assistant turn's calls are rendered back as those blocks: string arguments as they are, any other
  value `|tojson`; tool results are `<tool_response>` blocks in one user turn per run of tool messages,
  as Qwen3's.
- Thinking: the generation prompt opens `<think>\\n` for the model, or holds an empty closed block with
  `enable_thinking=false`. An earlier assistant turn keeps its `reasoning_content` (or the `<think>` part
  of its content) only after the last user query (Qwen3's rule), every turn with `preserve_thinking=true`
  (Qwen3.6's switch).
- A conversation with no user query (tool results alone) is refused, as Qwen3.5's template refuses it.
"""

from __future__ import annotations

_TOOLS = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' and messages[0].content %}{{- messages[0].content + '\\n\\n' }}"
    "{%- endif %}"
    "{{- '# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nIf you choose to call a function ONLY reply in the following format with NO "
    "suffix:\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\n"
    "value_1\\n</parameter>\\n<parameter=example_parameter_2>\\nThis is the value for the second "
    "parameter\\nthat can span\\nmultiple lines\\n</parameter>\\n</function>\\n</tool_call>\\n\\n"
    "<IMPORTANT>\\nReminder:\\n- Function calls MUST follow the specified format: an inner "
    "<function=...></function> block must be nested within <tool_call></tool_call> XML tags\\n"
    "- Required parameters MUST be specified\\n- You may provide optional reasoning for your function "
    "call in natural language BEFORE the function call, but NOT after\\n- If there is no function call "
    "available, answer the question like normal with your current knowledge and do not tell the user "
    "about function calls\\n</IMPORTANT><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
)
# The last user turn that is a query, not tool results: thinking after it is kept.
_LAST_QUERY = (
    "{%- set ns = namespace(last_query=messages | length - 1, found=false) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = messages | length - 1 - loop.index0 %}"
    "{%- if not ns.found and message.role == 'user' and message.content is string and not"
    " (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.found = true %}{%- set ns.last_query = index %}{%- endif %}"
    "{%- endfor %}"
    "{%- if not ns.found %}{{- raise_exception('No user query found in messages.') }}{%- endif %}"
)
_CALLS = (
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{%- if not loop.first or content | trim %}{{- '\\n' }}{%- endif %}"
    "{%- if loop.first and content | trim %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}"
    "{%- if tool_call.arguments is mapping %}"
    "{%- for name, value in tool_call.arguments.items() %}"
    "{{- '<parameter=' + name + '>\\n' }}"
    "{%- if value is string %}{{- value }}{%- else %}{{- value | tojson }}{%- endif %}"
    "{{- '\\n</parameter>\\n' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '</function>\\n</tool_call>' }}"
    "{%- endfor %}"
)
_TURNS = (
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning = message.reasoning_content if message.reasoning_content is string else '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if (loop.index0 > ns.last_query or preserve_thinking is true) and reasoning %}"
    "{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- content }}"
    "{%- if message.tool_calls %}" + _CALLS + "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
)
_GENERATION = (
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}"
    "{%- endif %}"
)
CHAT_TEMPLATE = _TOOLS + _LAST_QUERY + _TURNS + _GENERATION
