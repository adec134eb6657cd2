"""Tiny random-weight models, built locally so tests and demos need no model hub.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the English text in
this module, set up like a real model's, so prompts, chat templates and incremental
detokenization behave as they do with one. Two flavors:

* ``tiny-qwen2`` (the CPU default): Qwen2's (NFC, Qwen2's split regex, ChatML
  special tokens and template), a Qwen2 model;
* ``tiny-llama3``: Llama 3's (its split regex, no normalizer, its special tokens,
  reserved special tokens as padding, the Llama 3.1 chat template verbatim, a BOS),
  a Llama model. Tests pin the actors' token-id prompts against it.

The weights are random: the output is noise, but deterministic noise.

The build is cached on disk under a directory named by a hash of the build spec; it
is built into a temporary directory and renamed into place under an ``fcntl`` lock,
so the tool and chat actors starting together build it once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "CHATML_TEMPLATE",
    "LLAMA31_TEMPLATE",
    "TINY_SPECS",
    "TinyModelSpec",
    "build_tiny_tokenizer",
    "ensure_tiny_model",
]

# Bump when the build code changes in a way the spec does not capture.
BUILD_VERSION = 1

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
# Filler tokens that bring the tokenizer up to the model's vocab size; they are not
# special, so a sampled one decodes to visible text instead of vanishing.
RESERVED_TOKEN = "<|reserved_{}|>"

# Qwen2's pre-tokenizer split: contractions, letters with one leading non-letter,
# single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3's pre-tokenizer split: like Qwen2's, with digits in runs of up to three.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_BOS = "<|begin_of_text|>"
LLAMA3_EOT = "<|eot_id|>"
LLAMA3_PAD = "<|finetune_right_pad_id|>"
LLAMA3_SPECIAL_TOKENS = (
    LLAMA3_BOS,
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    LLAMA3_EOT,
    "<|eom_id|>",
    "<|python_tag|>",
    LLAMA3_PAD,
)
LLAMA3_RESERVED_TOKEN = "<|reserved_special_token_{}|>"

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Meta's Llama 3.1 Instruct chat template, as its tokenizer_config.json ships it: the
# system message's date header, content trimmed, tool-call paths included.
LLAMA31_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    '    {%- set date_string = "26 Jul 2024" %}\n'
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    "\n"
    "{#- System message + builtin tools #}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    "{%- if builtin_tools is defined or tools is not none %}\n"
    '    {{- "Environment: ipython\\n" }}\n'
    "{%- endif %}\n"
    "{%- if builtin_tools is defined %}\n"
    "    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") "
    '+ "\\n\\n"}}\n'
    "{%- endif %}\n"
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{%- if tools is not none and not tools_in_user_message %}\n"
    '    {{- "You have access to the following functions. To call a function, please respond '
    'with JSON for a function call." }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of '
    "argument name and its value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no "
    'first user message!") }}\n'
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of '
    "argument name and its value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    '    {{- first_user_message + "<|eot_id|>"}}\n'
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in "
    "message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
    "message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n"
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- "<|python_tag|>" + tool_call.name + ".call(" }}\n'
    "            {%- for arg_name, arg_val in tool_call.arguments | items %}\n"
    "                {{- arg_name + '=\"' + arg_val + '\"' }}\n"
    "                {%- if not loop.last %}\n"
    '                    {{- ", " }}\n'
    "                {%- endif %}\n"
    "                {%- endfor %}\n"
    '            {{- ")" }}\n'
    "        {%- else  %}\n"
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "            {{- '\"parameters\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    '            {{- "}" }}\n'
    "        {%- endif %}\n"
    "        {%- if builtin_tools is defined %}\n"
    "            {#- This means we're in ipython mode #}\n"
    '            {{- "<|eom_id|>" }}\n'
    "        {%- else %}\n"
    '            {{- "<|eot_id|>" }}\n'
    "        {%- endif %}\n"
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    '        {{- "<|eot_id|>" }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# Original text in the register the actors see: chat turns, Hammer-style tool prompts
# and answers, persona words. Its only job is to give BPE realistic merges.
CORPUS = """\
<|im_start|>system
You are a warm, quick and curious voice assistant. Keep answers short, speak
naturally, and never read out code or markup. The user is talking to you through a
microphone, so expect filler words, false starts and half finished sentences.
<|im_end|>
<|im_start|>user
hey, are you there? I just got back from the store and I'm exhausted.
<|im_end|>
<|im_start|>assistant
I'm here! Long day? Tell me what happened at the store.
<|im_end|>
<|im_start|>user
they were out of oat milk again, so I bought almond milk, which I don't even like.
<|im_end|>
<|im_start|>assistant
That's annoying. Almond milk is fine in coffee, though. Want a recipe that hides it?
<|im_end|>
<|im_start|>user
can you look at my screen and tell me what this error means?
<|im_end|>
<|im_start|>assistant
Sure, give me a second to take a look at what's on your screen.
<|im_end|>

[BEGIN OF TASK INSTRUCTION]
You are a tool calling assistant. In order to complete the user's request, you need to
select one or more appropriate tools from the following tools and fill in the correct
values for the tool parameters. Your specific tasks are:
1. Make one or more function or tool calls to meet the request based on the question.
2. If none of the functions can be used, point it out and refuse to answer.
3. If the given question lacks the parameters required by the function, also point it out.
[END OF TASK INSTRUCTION]

[BEGIN OF AVAILABLE TOOLS]
[{"name": "take_screenshot", "description": "Capture the user's screen when they ask \
the assistant to look at, read, or check something that is visible on it.", \
"parameters": {}}]
[END OF AVAILABLE TOOLS]

[BEGIN OF FORMAT INSTRUCTION]
The output MUST strictly adhere to the following JSON format, and NO other text MUST be
included. The example format is as follows. Please make sure the parameter type is
correct. If no function call is needed, please directly output an empty list '[]'.
```
[
    {"name": "func_name1", "arguments": {"argument1": "value1", "argument2": "value2"}},
    ... (more tool calls as required)
]
```
[END OF FORMAT INSTRUCTION]

[BEGIN OF QUERY]
what do you think of this outfit? look at this
[END OF QUERY]
[{"name": "take_screenshot", "arguments": {}}]

[BEGIN OF QUERY]
tell me a joke about penguins
[END OF QUERY]
[]

[BEGIN OF QUERY]
can you see my screen right now
[END OF QUERY]
[{"name": "take_screenshot", "arguments": {}}]

[BEGIN OF QUERY]
what's the weather going to be like this weekend?
[END OF QUERY]
[]

[BEGIN OF QUERY]
read the message on the screen for me please
[END OF QUERY]
[{"name": "take_screenshot", "arguments": {}}]

[BEGIN OF QUERY]
I had the strangest dream last night
[END OF QUERY]
[]

Persona: your name is June. You are wholesome, kind and encouraging, with a soft
sense of humor. Style: wholesome. Assistant gender: female. User identity: a night
shift nurse who likes gardening and old movies.
Persona: your name is Rex. You are savage, sarcastic and blunt, but never cruel.
Style: savage. Assistant gender: male. User identity: a student who procrastinates.
Persona: you are flirty, playful and a little dramatic. Style: flirty. Assistant
gender: non-binary. User identity: a musician on tour who misses home.

User: I can't sleep. Can you talk to me for a bit?
Assistant: Of course. Let's keep it easy. What was the best part of your day?
User: Honestly? The sandwich I had for lunch.
Assistant: A great sandwich can carry a whole day. What was in it?
User: Turkey, cheese, tomatoes, and way too much mustard.
Assistant: Way too much mustard is the right amount of mustard. Bold choice.
User: Do you remember what we talked about yesterday?
Assistant: We talked about your sister's wedding and the speech you have to give.
User: Right. I still haven't written it. It's on Saturday.
Assistant: Then let's start now. Tell me one story about her that always makes you
laugh, and we'll build the speech around it.
User: Okay, so when we were kids she tried to sell lemonade in the middle of winter.
Assistant: That's perfect. Stubborn, hopeful, and a little bit ridiculous. Sounds
like someone who would make a wonderful partner.
User: Wait, can you check this spreadsheet I have open?
Assistant: Let me take a screenshot so I can see it.
User: Never mind, I figured it out.
Assistant: Nice work. What was wrong with it?
User: A formula pointed at the wrong column. Classic.
Assistant: Classic indeed. The number of hours lost to one wrong column is staggering.
User: What time is it in Tokyo right now?
Assistant: I can't check the clock from here, but Tokyo is usually about thirteen or
fourteen hours ahead of New York, depending on daylight saving time.
User: Thanks. I'm going to try to sleep again.
Assistant: Good night. Breathe slowly, and let the thoughts drift past. I'll be here.

{"type": "start", "session_id": "s-1", "turn_id": "t-1", "text": "hello there"}
{"type": "toolcall", "status": "yes", "raw": "[{\\"name\\": \\"take_screenshot\\"}]"}
{"type": "toolcall", "status": "no", "raw": "[]"}
{"type": "token", "text": "Hi"}
{"type": "final", "text": "Hi! How are you doing today?"}
{"type": "done", "reason": "stop", "usage": {"prompt_tokens": 412, "completion_tokens": 9}}
{"type": "done", "reason": "cancelled"}
{"type": "error", "code": "rate_limited", "message": "too many messages"}

Numbers and times come up all the time: 1, 2, 3, 10, 25, 100, 2024, 3:45 pm, 7:30 in
the morning, 60 percent, 1.5 hours, $12.99, the 3rd of May, room 204, 555-0142.
People ask how, what, when, where, why and who. They say yes, no, maybe, okay, sure,
um, uh, like, you know, I mean, actually, basically, literally, honestly, anyway.
They thank you, apologize, interrupt, change the subject, and come back to it later.
User: My landlord finally fixed the heating, after three weeks of emails.
Assistant: Three weeks! You must have been sleeping in a sweater and two pairs of socks.
User: Four pairs. I also learned to bake bread just to keep the oven running.
Assistant: That is the most productive revenge on a broken radiator I have ever heard.
User: Should I take the job in Denver or stay here with my friends?
Assistant: What pulls you toward Denver, the work itself or the change of scenery?
User: Mostly the mountains, if I'm being honest. And the salary is better.
Assistant: Those are real reasons. Could you picture a Sunday there, alone, in winter?
User: Play something relaxing. Actually, no, something upbeat, I need energy.
Assistant: Upbeat it is. Think bright guitars, quick drums, and a chorus you can shout.
User: Remind me to call my grandmother tomorrow evening.
Assistant: I can't set reminders myself, but your phone's clock app can, in two taps.
User: Explain black holes like I'm five years old.
Assistant: Imagine a drain in space so strong that even light slides down it and never
comes back up. Stars, dust and gas swirl around it like water in a bathtub.
User: Why is the sky blue but sunsets are orange?
Assistant: Sunlight bounces off the air, and blue light bounces the most, so it fills
the sky. At sunset the light travels through much more air, the blue gets scattered
away first, and the warm reds and oranges are what's left to reach your eyes.
User: I burned the rice again. How do people cook rice without a rice cooker?
Assistant: Rinse it, use a little less water than you think, bring it to a boil, then
cover it, turn the heat very low, and leave the lid alone for fifteen minutes.
User: Which is heavier, a kilogram of feathers or a kilogram of steel?
Assistant: They weigh the same, a kilogram each. The steel just hurts more to drop.
User: Help me write a text to cancel dinner without sounding rude.
Assistant: Try: "Hey, I'm so sorry, something came up tonight and I can't make dinner.
Can we find another evening next week? I really want to catch up."
User: Quick, what's a good name for a grumpy orange cat?
Assistant: Pumpkin, Marmalade, Sir Grumbles, or Captain Hiss. I vote Sir Grumbles.
User: How many cups are in a liter?
Assistant: A little over four, roughly four point two US cups.
User: I'm nervous about my presentation on Monday.
Assistant: That's normal, and it usually means you care. Practice the first minute out
loud until it feels boring; the rest tends to follow once you have started.
User: Can you translate "where is the train station" into Spanish?
Assistant: "Donde esta la estacion de tren?" Say it slowly and point hopefully.
User: Summarize the plot of a heist movie in one sentence.
Assistant: A tired expert assembles an unlikely crew for one last job, everything goes
wrong in the middle, and the plan turns out to have been smarter than it looked.
Questions, answers, stories, plans, worries, jokes, recipes, directions, reminders,
weather, music, sports, travel, family, friends, work, school, money, health, sleep,
coffee, breakfast, dinner, weekend, holiday, birthday, wedding, interview, deadline,
morning, afternoon, evening, tonight, tomorrow, yesterday, Monday, Tuesday, Wednesday,
Thursday, Friday, Saturday, Sunday, January, February, March, April, June, July,
August, September, October, November, December, spring, summer, autumn, winter.
A good assistant listens first, answers the question that was asked, and stops.
It does not lecture, it does not repeat itself, and it does not pretend to know
things it cannot know. When it is unsure, it says so, and it asks a short question.
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyModelSpec:
    """Everything a build depends on; its hash names the cache directory."""

    vocab_size: int = 2048
    # What the BPE trainer aims for; the rest up to ``vocab_size`` is reserved tokens.
    bpe_vocab_size: int = 1900
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 8192
    # Wider than the usual 0.02 so the logits are peaked enough for greedy decoding to
    # wander instead of repeating one near-uniform argmax.
    initializer_range: float = 0.2
    seed: int = 0
    # Whose tokenizer, template and architecture: Qwen2's (ChatML) or Llama 3's.
    flavor: Literal["qwen2", "llama3"] = "qwen2"

    def digest(self) -> str:
        """A short hash of the spec, the corpus and the build code version."""
        spec = dataclasses.asdict(self)
        if self.flavor == "qwen2":
            del spec["flavor"]  # the field came later: qwen2 builds keep their hash
        payload = json.dumps(
            {"spec": spec, "corpus": CORPUS, "version": BUILD_VERSION}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


TINY_SPECS: MappingProxyType[str, TinyModelSpec] = MappingProxyType(
    {"tiny-qwen2": TinyModelSpec(), "tiny-llama3": TinyModelSpec(flavor="llama3")}
)


def ensure_tiny_model(
    cache_root: Path, name: str = "tiny-qwen2", *, spec: TinyModelSpec | None = None
) -> Path:
    """Return the directory of the tiny model ``name``, building it on first use.

    The directory loads with ``AutoTokenizer.from_pretrained`` and
    ``AutoModelForCausalLM.from_pretrained``. Safe to call from several processes at
    once: one builds, the others wait on the lock and then find it built.

    Args:
        cache_root: where built models live; created if missing.
        name: a key of ``TINY_SPECS``, unless ``spec`` is given.
        spec: build this spec under ``name`` instead of the registered one.

    Raises:
        ValueError: ``name`` is not a known tiny model and no ``spec`` was given.
    """
    if spec is None:
        try:
            spec = TINY_SPECS[name]
        except KeyError:
            known = ", ".join(sorted(TINY_SPECS))
            raise ValueError(f"unknown tiny model {name!r}; known: {known}") from None
    target = cache_root / f"{name}-{spec.digest()}"
    if target.is_dir():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    lock_path = cache_root / f".{target.name}.lock"
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            # Another process may have finished the build while we waited.
            if target.is_dir():
                return target
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
            try:
                _build(spec, scratch)
                os.rename(scratch, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return target


def _build(spec: TinyModelSpec, out_dir: Path) -> None:
    tokenizer = _build_tokenizer(spec)
    tokenizer.save_pretrained(out_dir)
    _build_model(spec, tokenizer).save_pretrained(out_dir)


def build_tiny_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The tokenizer of the tiny model ``name``, built in memory (no model, no files).

    Raises:
        ValueError: ``name`` is not a known tiny model.
    """
    try:
        spec = TINY_SPECS[name]
    except KeyError:
        known = ", ".join(sorted(TINY_SPECS))
        raise ValueError(f"unknown tiny model {name!r}; known: {known}") from None
    return _build_tokenizer(spec)


def _build_tokenizer(spec: TinyModelSpec) -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    llama = spec.flavor == "llama3"
    specials = LLAMA3_SPECIAL_TOKENS if llama else SPECIAL_TOKENS
    backend = Tokenizer(models.BPE())
    if not llama:
        backend.normalizer = normalizers.NFC()
    split = Regex(LLAMA3_SPLIT if llama else QWEN2_SPLIT)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(split, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=spec.bpe_vocab_size,
        min_frequency=1,
        special_tokens=list(specials),
        # All 256 bytes, so any text encodes even if the corpus never shows it.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)

    if llama:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token=LLAMA3_BOS,
            eos_token=LLAMA3_EOT,
            pad_token=LLAMA3_PAD,
            additional_special_tokens=[
                t for t in specials if t not in (LLAMA3_BOS, LLAMA3_EOT, LLAMA3_PAD)
            ],
            chat_template=LLAMA31_TEMPLATE,
            model_max_length=spec.max_position_embeddings,
            clean_up_tokenization_spaces=False,
        )
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token=IM_END,
            pad_token=END_OF_TEXT,
            additional_special_tokens=[IM_START],
            chat_template=CHATML_TEMPLATE,
            model_max_length=spec.max_position_embeddings,
            clean_up_tokenization_spaces=False,
        )
    missing = spec.vocab_size - len(tokenizer)
    if missing < 0:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, over vocab_size")
    if llama:
        # Llama 3 pads with reserved special tokens: skipped when decoding.
        tokenizer.add_tokens(
            [LLAMA3_RESERVED_TOKEN.format(i) for i in range(missing)], special_tokens=True
        )
    else:
        tokenizer.add_tokens([RESERVED_TOKEN.format(i) for i in range(missing)])
    return tokenizer


def _build_model(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "initializer_range": spec.initializer_range,
        "tie_word_embeddings": True,
        "eos_token_id": tokenizer.convert_tokens_to_ids(tokenizer.eos_token),
        "pad_token_id": tokenizer.convert_tokens_to_ids(tokenizer.pad_token),
    }
    # fork_rng keeps the build from disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.flavor == "llama3":
            bos = tokenizer.convert_tokens_to_ids(LLAMA3_BOS)
            model = LlamaForCausalLM(LlamaConfig(bos_token_id=bos, **shape))
        else:
            model = Qwen2ForCausalLM(Qwen2Config(bos_token_id=None, **shape))
    return model.eval()
