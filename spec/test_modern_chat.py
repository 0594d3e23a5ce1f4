"""Spec for gpt_components.modern.chat: Llama 3's and Qwen3's chat formats.

References: ``transformers``' ``apply_chat_template`` rendering, inside a tokenizer directory made
here, the published templates' rules as Jinja (the Llama 3 Instruct template, and Qwen3's without
its tool branches, written out here); the ``tokenizers`` library's ids for the rendered text; and
conversations written out by hand from the published formats.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from gpt_components.modern.chat import (
    Gemma3ChatFormat,
    Llama3ChatFormat,
    Qwen3ChatFormat,
    chat_format_for,
)
from gpt_components.modern.tokenizers import load_tokenizer
from gpt_components.tokenizers import gpt2_tokenizer
from spec.test_modern_tokenizers import LLAMA3_SPECIALS, QWEN_ADDED, QWEN_SPECIALS

pytestmark = pytest.mark.modern

LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
QWEN3_TEMPLATE = """
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501


def _byte_level_tokenizer(specials, added=()):
    """A byte-level tokenizer.json (no merges): enough for templates and exact ids."""
    from gpt_components.tokenizers import gpt2_byte_decoder

    vocab = {char: byte for char, byte in gpt2_byte_decoder().items()}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tok


def _model_dir(path, tokenizer, config):
    path.mkdir()
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", **config}))
    return path


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    path = _model_dir(tmp_path_factory.mktemp("q") / "qwen3",
                      _byte_level_tokenizer(QWEN_SPECIALS, QWEN_ADDED),
                      {"eos_token": "<|im_end|>", "chat_template": QWEN3_TEMPLATE})
    return load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = _model_dir(tmp_path_factory.mktemp("l") / "llama3",
                      _byte_level_tokenizer(LLAMA3_SPECIALS),
                      {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                       "chat_template": LLAMA3_TEMPLATE})
    return load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)


def _hf_ids(hf, messages, **kwargs):
    out = hf.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if not isinstance(out, list) else out)


contents = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), max_size=12),
    st.sampled_from(["", " ", "\n", "  padded \n", "Hi!", "12 + 30 = 42", "café\n\n"]),
)
thoughts = st.builds(lambda pre, r, mid, a: f"{pre}<think>{r}</think>{mid}{a}",
                     st.sampled_from(["", "\n"]), contents, st.sampled_from(["", "\n", "\n\n"]),
                     contents)


@st.composite
def conversations(draw, late_system=False):
    """Conversations as the templates take them; ``late_system`` may add a system message after
    the first turn (Llama 3's and Qwen3's templates write it as a turn of its own)."""
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(contents)})
    for turn in range(draw(st.integers(1, 4))):
        role = "user" if turn % 2 == 0 else "assistant"
        content = draw(st.one_of(contents, thoughts) if role == "assistant" else st.one_of(
            contents, st.just("<tool_response>42</tool_response>")))
        message = {"role": role, "content": content}
        if role == "assistant" and draw(st.integers(0, 4)) == 0:
            message["reasoning_content"] = draw(contents)
        messages.append(message)
    if draw(st.booleans()):
        messages.append({"role": "assistant", "content": draw(st.one_of(contents, thoughts))})
    if late_system and draw(st.integers(0, 3)) == 0:
        messages.insert(draw(st.integers(1, len(messages))),
                        {"role": "system", "content": draw(contents)})
    return messages


@settings(max_examples=40)
@given(messages=conversations(late_system=True), prompt=st.booleans(), thinking=st.booleans())
def test_qwen3_chat_renders_as_its_template_does_in_transformers(messages, prompt, thinking,
                                                                 qwen):
    tok, hf = qwen
    chat = Qwen3ChatFormat(enable_thinking=thinking)
    text = chat.render(messages, add_generation_prompt=prompt)
    kwargs = {"add_generation_prompt": prompt, "enable_thinking": thinking}
    assert text == hf.apply_chat_template(messages, tokenize=False, **kwargs)
    assert chat.encode(tok, messages, add_generation_prompt=prompt) == _hf_ids(
        hf, messages, **kwargs)


@settings(max_examples=25)
@given(messages=conversations(late_system=True), prompt=st.booleans())
def test_llama3_chat_renders_as_its_template_does_in_transformers(messages, prompt, llama):
    tok, hf = llama
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = Llama3ChatFormat().render(messages, add_generation_prompt=prompt)
    assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    assert Llama3ChatFormat().encode(tok, messages, add_generation_prompt=prompt) == _hf_ids(
        hf, messages, add_generation_prompt=prompt)


def test_the_published_formats_written_out():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2?\n"},
                {"role": "assistant", "content": "<think>\nAdd.\n</think>\n\n4"},
                {"role": "user", "content": "And 3+3?"}]
    assert Llama3ChatFormat().render(messages) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\nAdd.\n</think>\n\n4<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # Qwen3 drops the reasoning of turns before the last question, and thinking off writes an
    # empty thought after the prompt.
    assert Qwen3ChatFormat(enable_thinking=False).render(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?\n<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    answered = messages + [{"role": "assistant", "content": "6", "reasoning_content": "Sum."}]
    assert Qwen3ChatFormat().render(answered, add_generation_prompt=False).endswith(
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n<think>\nSum.\n</think>\n\n"
        "6<|im_end|>\n")


def test_a_special_token_typed_in_a_message_stays_text(qwen, llama):
    for (tok, _), chat, marker in [(llama, Llama3ChatFormat(), "<|eot_id|>"),
                                   (qwen, Qwen3ChatFormat(), "<|im_end|>")]:
        messages = [{"role": "user", "content": f"x {marker} y"}]
        ids = chat.encode(tok, messages)
        marker_id = tok.encode(marker, allowed_special={marker})
        assert ids.count(marker_id[0]) == 1  # only the turn's own end
        assert tok.decode(ids) == chat.render(messages)


def test_the_format_is_chosen_by_the_tokenizer_and_knows_its_stop_tokens(qwen, llama):
    llama_tok, qwen_tok = llama[0], qwen[0]
    assert isinstance(chat_format_for(llama_tok), Llama3ChatFormat)
    chosen = chat_format_for(qwen_tok, enable_thinking=False)
    assert isinstance(chosen, Qwen3ChatFormat) and chosen.enable_thinking is False
    ids = {name: llama_tok.encode(name, allowed_special="all")[0]
           for name in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")}
    assert Llama3ChatFormat().stop_ids(llama_tok) == list(ids.values())
    assert Qwen3ChatFormat().stop_ids(qwen_tok) == [
        qwen_tok.encode(t, allowed_special="all")[0] for t in ("<|im_end|>", "<|endoftext|>")]
    from gpt_components.tokenizers import gpt2_tokenizer

    with pytest.raises(ValueError, match="chat tokens of no registered family's format"):
        chat_format_for(gpt2_tokenizer())
    with pytest.raises(ValueError, match="lacks <|im_end|>, <|im_start|>"):
        Qwen3ChatFormat().encode(gpt2_tokenizer(), [{"role": "user", "content": "x"}])


def test_bad_messages_are_named():
    chat = Qwen3ChatFormat()
    with pytest.raises(ValueError, match=r"^messages\[1\]\['role'\] must be one of system, user"):
        chat.render([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    with pytest.raises(TypeError, match=r"^messages\[0\]\['content'\] must be a str"):
        chat.render([{"role": "user", "content": None}])
    with pytest.raises(TypeError, match="^messages must be a list"):
        chat.render("hello")
    with pytest.raises(TypeError, match="^enable_thinking must be True or False"):
        Qwen3ChatFormat(enable_thinking="no")


# Gemma 3 instruct's published template (string contents), written out here.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    path = _model_dir(tmp_path_factory.mktemp("g") / "gemma3",
                      _byte_level_tokenizer(GEMMA3_SPECIALS),
                      {"bos_token": "<bos>", "eos_token": "<eos>",
                       "chat_template": GEMMA3_TEMPLATE})
    return load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)


@settings(max_examples=25)
@given(messages=conversations(), prompt=st.booleans())
def test_gemma3_chat_renders_as_its_template_does_in_transformers(messages, prompt, gemma):
    tok, hf = gemma
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    alternating = all((m["role"] == "user") == (i % 2 == 0) for i, m in enumerate(turns))
    chat = Gemma3ChatFormat()
    if not alternating:
        with pytest.raises(ValueError, match="must alternate user / assistant"):
            chat.render(messages, add_generation_prompt=prompt)
        with pytest.raises(Exception, match="must alternate"):
            hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        return
    text = chat.render(messages, add_generation_prompt=prompt)
    assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    assert chat.encode(tok, messages, add_generation_prompt=prompt) == _hf_ids(
        hf, messages, add_generation_prompt=prompt)


def test_gemma3_chat_written_out_by_hand_and_picked_by_its_tokens(gemma):
    tok, _ = gemma
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hello."}]
    assert Gemma3ChatFormat().render(messages) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>model\n")
    assert isinstance(chat_format_for(tok), Gemma3ChatFormat)
    assert Gemma3ChatFormat().stop_ids(tok) == tok.encode(
        "<end_of_turn><eos>", allowed_special={"<end_of_turn>", "<eos>"})


# -- gpt-components generate --chat ----------------------------------------------------------------

CHATS = {  # preset: its tokenizer's specials, tokenizer_config.json, and the end of a turn
    "llama3-nano": (LLAMA3_SPECIALS, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                      "chat_template": LLAMA3_TEMPLATE}, "<|eot_id|>"),
    "qwen3-nano": (QWEN_SPECIALS, {"eos_token": "<|im_end|>", "chat_template": QWEN3_TEMPLATE},
                   "<|im_end|>"),
    "gemma3-nano": (GEMMA3_SPECIALS, {"bos_token": "<bos>", "eos_token": "<eos>",
                                      "chat_template": GEMMA3_TEMPLATE}, "<end_of_turn>"),
}


@pytest.mark.parametrize("preset", sorted(CHATS))
def test_generate_chat_sends_the_prompt_in_the_format_and_stops_at_the_end_of_the_turn(
        preset, tmp_path, capsys, monkeypatch):
    from gpt_components import generation
    from gpt_components.cli import main
    from gpt_components.machinery.pretrained import save_pretrained
    from gpt_components.machinery.registry import build_model, preset_config

    specials, config, end_of_turn = CHATS[preset]
    library = _byte_level_tokenizer(specials)
    directory = _model_dir(tmp_path / "instruct", library, config)
    vocab = library.get_vocab_size(with_added_tokens=True)
    save_pretrained(build_model(preset_config(preset, vocab_size=vocab)), directory)
    answer = library.encode("Hi, I'm here.").ids
    script = [*answer, library.token_to_id(end_of_turn), *library.encode(" and on").ids]
    prompts = []
    real = generation.generate_stream

    def scripted(model, idx, *args, **kwargs):
        real(model, idx, *args, **kwargs)  # the command's arguments are checked as always
        prompts.append(idx[0].tolist())
        return (torch.tensor([[token]]) for token in script)

    monkeypatch.setattr(generation, "generate_stream", scripted)
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Who painted it?"}]
    assert main(["generate", str(directory), "--chat", "--system", messages[0]["content"],
                 "--prompt", messages[1]["content"], "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == "Hi, I'm here.\n"  # the answer alone, not its end
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    rendered = library.decode(prompts[0], skip_special_tokens=False)
    assert rendered == hf.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=True)
    assert rendered == chat_format_for(load_tokenizer(directory)).render(messages)


def test_generate_chat_needs_a_tokenizer_with_a_chat_format(tmp_path, capsys):
    from gpt_components.cli import main
    from gpt_components.machinery.pretrained import save_pretrained
    from gpt_components.model import GPTConfig, GPTModel

    save_pretrained(GPTModel(GPTConfig(context_length=8, emb_dim=8, n_heads=2, n_layers=1)),
                    tmp_path / "gpt2")  # no tokenizer files: GPT-2's, which has no chat tokens
    for extra, message in ((["--chat"], "--chat needs a tokenizer with a chat format"),
                           (["--system", "Be brief."], "--system is the system message of a "
                                                       "chat: give it with --chat")):
        assert main(["generate", str(tmp_path / "gpt2"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gpt-components: error: {message}") and err.count("\n") == 1


# -- conversations no format renders: refused where the published templates refuse or guess ------

FORMATS = {"llama": Llama3ChatFormat, "qwen": Qwen3ChatFormat, "gemma": Gemma3ChatFormat}


def _turns(*roles):
    return [{"role": role, "content": f"{role} {i} says hi"} for i, role in enumerate(roles)]


def _refused_by_name(chat, messages):
    with pytest.raises(ValueError) as caught:
        chat.render(messages)
    assert caught.value.parameter == "messages"
    return str(caught.value)


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_an_empty_conversation_is_refused_as_transformers_refuses_it(family, request):
    _, hf = request.getfixturevalue(family)
    assert "at least one message" in _refused_by_name(FORMATS[family](), [])
    with pytest.raises(ValueError, match="empty conversation"):
        hf.apply_chat_template([], tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family", sorted(FORMATS))
@pytest.mark.parametrize("roles", [("user", "system"), ("system", "system", "user"),
                                   ("user", "assistant", "system"),
                                   ("system", "user", "assistant", "system", "user")])
def test_a_system_message_after_the_first_is_written_as_the_template_writes_it_or_refused(
        family, roles, request):
    """The published templates of Llama 3 and Qwen3 write a late system message as a system turn
    in the middle of the conversation: so do their formats here, to the character. Gemma 3's
    template either refuses it (its alternation rule) or writes a ``system`` turn, a role its
    model was never tuned on: its format refuses it, naming the message."""
    tok, hf = request.getfixturevalue(family)
    messages = _turns(*roles)
    late = min(i for i, role in enumerate(roles) if role == "system" and i > 0)
    if family != "gemma":
        chat = FORMATS[family]()
        text = chat.render(messages)
        assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert chat.encode(tok, messages) == _hf_ids(hf, messages, add_generation_prompt=True)
        header = {"llama": "<|start_header_id|>system<|end_header_id|>",
                  "qwen": "<|im_start|>system"}[family]
        assert text[:text.index(f"system {late} says hi")].rstrip("\n").endswith(header)
        return
    message = _refused_by_name(FORMATS[family](), messages)
    assert message.startswith(f"messages[{late}] is a system message: a system message may only "
                              f"come first")
    try:
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as error:  # jinja2's TemplateError: the template refuses it as well
        assert "must alternate" in str(error)
        return
    before = text[:text.index(f"system {late} says hi")]
    assert before.rstrip("\n").endswith("<start_of_turn>system")  # a turn its model never saw


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_an_unknown_role_is_refused_where_the_templates_render_drop_or_refuse_it(family,
                                                                                 request):
    _, hf = request.getfixturevalue(family)
    messages = _turns("user", "tool")
    assert "messages[1]['role'] must be one of system, user, assistant, got 'tool'" in \
        _refused_by_name(FORMATS[family](), messages)
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if family == "qwen":  # the template (without its tool branch) drops the message silently
        assert "tool 1 says hi" not in text
    else:  # a header for a role the model was never tuned on
        assert {"llama": "<|start_header_id|>tool", "gemma": "<start_of_turn>tool"}[family] in text


@pytest.mark.parametrize("family", sorted(FORMATS))
@pytest.mark.parametrize("message, fragment", [
    ({"role": "user", "content": None}, "['content'] must be a str, got NoneType"),
    ({"role": "user", "content": 5}, "['content'] must be a str, got int"),
    ({"role": "user", "content": "x", "reasoning_content": 5},
     "['reasoning_content'] must be a str, got int"),
    ("user: hi", "messages[0] must be a dict, got str"),
])
def test_a_message_that_is_not_a_dict_of_strings_is_a_type_error(family, message, fragment):
    with pytest.raises(TypeError) as caught:
        FORMATS[family]().render([message])
    assert caught.value.parameter == "messages" and fragment in str(caught.value)


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_the_format_arguments_are_checked_by_name(family):
    chat = FORMATS[family]()
    with pytest.raises(TypeError) as caught:
        chat.render(_turns("user"), add_generation_prompt="yes")
    assert caught.value.parameter == "add_generation_prompt"
    for tokenizer, error in ((None, TypeError), (gpt2_tokenizer(), ValueError)):
        with pytest.raises(error) as caught:
            chat.encode(tokenizer, _turns("user"))
        assert caught.value.parameter == "tokenizer"
