"""The gateway's request and response bodies, as pydantic models: they validate requests and
make the OpenAPI schema the gateway serves (and that its schema tests check every response
against). OpenAI's shapes where OpenAI has one; unknown request fields are ignored, as
OpenAI's clients send fields a server may not use."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

INT64 = 2**63 - 1
Text = Field(max_length=4 * 1024 * 1024)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    hint: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# --- chat ------------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str = Text


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] = Field(max_length=4 * 1024 * 1024)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    name: str = Field("answer", max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Sampling(_Request):
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=INT64)
    stop: str | list[str] | None = Field(None, max_length=16)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]


class ChatCompletionRequest(Sampling):
    model: str = Field(max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    # hyperlex: scenes retrieved from a scene memory into the last user message
    rag_k: int = Field(0, ge=0, le=64)
    memory: str = Field("default", max_length=128)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TurnReport(BaseModel):
    """What the chat turn decided: the adapter, the route, the scenes cited."""

    adapter: Any = None
    route: dict[str, Any] | None = None
    cited: list[str] = []
    dropped_turns: int = 0
    hint: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    hyperlex: TurnReport


# --- completions -----------------------------------------------------------------------------


class CompletionRequest(Sampling):
    model: str = Field(max_length=256)
    prompt: str | list[str] | list[int] | list[list[int]] = Field(max_length=4 * 1024 * 1024)
    max_tokens: int = Field(16, ge=0, le=1_000_000)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per prompt")


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


# --- models ----------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None
    root: str | None = None
    kind: Literal["base", "router", "adapter"]
    source: str | None = None
    sha256: str | None = None
    rank: int | None = None
    lora_alpha: float | None = None
    target_modules: list[str] | str | None = None
    aliases: list[str] | None = None
    description: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- embeddings, scenes, bridge ------------------------------------------------------------


class EmbeddingRequest(_Request):
    input: str | list[str] = Field(max_length=2048)
    model: str | None = Field(None, max_length=256)
    # base64: little-endian float32 bytes (what the openai client asks for by default)
    encoding_format: Literal["float", "base64"] = "float"


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class SceneSearchRequest(_Request):
    query: str = Field(min_length=1, max_length=64 * 1024)
    k: int = Field(5, ge=1, le=1000)
    # `register` is a name pydantic's models have already: stored as register_
    register_: str | list[str] | None = Field(None, alias="register")
    doc: str | list[str] | None = None
    memory: str = Field("default", max_length=128)


class SceneSearchReply(BaseModel):
    hits: list[dict[str, Any]]
    memory: str | None = None
    hint: str | None = None


class BridgeEncodeRequest(_Request):
    model: str = Field(max_length=256, description="a bridge-trained adapter")
    text: str = Field(min_length=1, max_length=256 * 1024)
    max_tokens: int = Field(256, ge=1, le=8192)


class BridgeScene(_Request):
    register_: str | None = Field(None, alias="register")
    fields: dict[str, Any] = {}
    markers: list[str] = []


class BridgeEncodeReply(BaseModel):
    model: str
    scene: dict[str, Any]
    raw: str


class BridgeDecodeRequest(_Request):
    model: str = Field(max_length=256, description="a bridge-trained adapter")
    scene: BridgeScene
    max_tokens: int = Field(256, ge=1, le=8192)


class BridgeDecodeReply(BaseModel):
    model: str
    text: str


# --- tokenizer -------------------------------------------------------------------------------


class TokenizeRequest(_Request):
    prompt: str = Field(max_length=4 * 1024 * 1024)
    add_special_tokens: bool = False
    model: str | None = None


class TokenizeReply(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(_Request):
    tokens: list[int] = Field(max_length=1_000_000)
    model: str | None = None


class DetokenizeReply(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    model_max_length: int
    tokenizer_class: str


# --- admin -----------------------------------------------------------------------------------


class JobSubmit(_Request):
    kind: str = Field(max_length=64)
    params: dict[str, str | int | float | bool] = {}
    profile: str | None = Field(None, max_length=4096)
    request_id: str | None = Field(None, max_length=128)


class JobReply(BaseModel):
    job: dict[str, Any]
    created: bool | None = None


class JobListReply(BaseModel):
    jobs: list[dict[str, Any]]


class AdapterLoad(_Request):
    name: str = Field(max_length=64)
    path: str = Field(max_length=4096)


class AdapterUnload(_Request):
    name: str = Field(max_length=64)


class AdapterLoaded(BaseModel):
    name: str
    path: str
    load_s: float
    rank: int | None = None
    target_modules: list[str] | str | None = None
    sha256: str | None = None


class AdapterUnloaded(BaseModel):
    name: str
    unloaded: bool
    freed: bool


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    ready: bool
    model: str | None = None
    reason: str | None = None
