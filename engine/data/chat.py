"""Chat framing for training samples: the base model's own template, cut around prompt and answer.

A chat template is Jinja that turns messages into one string. To know which tokens are the
prompt (masked) and which the answer (trained), the template is rendered once with two sentinel
strings in place of the user's and the assistant's content and cut at them, giving three pieces:
`before` the prompt, `between` prompt and answer, and `after` the answer (its end-of-turn token
is trained, so the model learns to stop). `auto` uses the template shipped with the base model;
`chatml`, `qwen`, `mistral` and `saiga` are built in for models that ship none.

This module knows nothing of scenes or models; it only frames strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError

_PROMPT_SENTINEL = "\u2063HYPERLEX-PROMPT\u2063"
_ANSWER_SENTINEL = "\u2063HYPERLEX-ANSWER\u2063"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
)
QWEN = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are Qwen, created by "
    "Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{% endif %}" + CHATML
)
# Tokenizers without a BOS or EOS token leave the variable undefined; render nothing for it.
_BOS = "(bos_token if bos_token is defined and bos_token else '')"
_EOS = "(eos_token if eos_token is defined and eos_token else '')"
MISTRAL = (
    "{{ " + _BOS + " }}{% set system = '' %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set system = message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + system + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + " + _EOS + " }}{% endif %}{% endfor %}"
)
SAIGA = (
    "{% for message in messages %}{{ " + _BOS + " + message['role'].replace('assistant', 'bot') + "
    "'\\n' + message['content'] + " + _EOS + " }}{% endfor %}"
)
BUILT_IN_TEMPLATES = {"chatml": CHATML, "qwen": QWEN, "mistral": MISTRAL, "saiga": SAIGA}


@dataclass(frozen=True)
class ChatFrame:
    """The template's text around one prompt and one answer."""

    name: str  # "auto" (the base model's) or a built-in template's name
    before: str
    between: str
    after: str


def chat_frame(tokenizer: Any, template: str = "auto", system_prompt: str = "") -> ChatFrame:
    """Cut a chat template into the text before, between and after a prompt and an answer.

    Args:
        tokenizer: a transformers tokenizer (its `chat_template` is used for `auto`).
        template: `auto`, `chatml`, `qwen`, `mistral` or `saiga`.
        system_prompt: a system message to include; empty leaves the template's default.

    Returns:
        The frame.

    Raises:
        ConfigError: an unknown template name, or a template that does not place the prompt
            before the answer exactly once.
    """
    if template == "auto":
        jinja = getattr(tokenizer, "chat_template", None) or CHATML
        name = "auto" if getattr(tokenizer, "chat_template", None) else "chatml"
    elif template in BUILT_IN_TEMPLATES:
        jinja, name = BUILT_IN_TEMPLATES[template], template
    else:
        raise ConfigError(f"unknown chat template {template!r}",
                          hint=f"use auto or one of {', '.join(BUILT_IN_TEMPLATES)}")
    messages = [{"role": "user", "content": _PROMPT_SENTINEL},
                {"role": "assistant", "content": _ANSWER_SENTINEL}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    rendered = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False)
    if rendered.count(_PROMPT_SENTINEL) != 1 or rendered.count(_ANSWER_SENTINEL) != 1:
        raise ConfigError(f"the {name} chat template does not render one user and one assistant "
                          "message", hint="set model.chat_template to chatml, qwen, mistral or saiga")
    before, rest = rendered.split(_PROMPT_SENTINEL)
    between, after = rest.split(_ANSWER_SENTINEL)
    return ChatFrame(name=name, before=before, between=between, after=after)
