#!/usr/bin/python3
"""Writes tests/coordinator/chat_template_vectors.json: reference renderings and token ids for every chat
template tpserve recognises, made with implementations no one here wrote.

  /usr/bin/python3 scripts/make-chat-template-vectors.py [--shared ../shared] [--out FILE] [--check]

--check regenerates in memory and exits 1 if the committed file differs (CTest runs it; exit 77 = skipped when
python3-jinja2, python3-sentencepiece or ../shared is missing).

Needs Debian's python3-jinja2 and python3-sentencepiece (scripts/install-deps.sh). The template texts below are
data, copied from the model repositories named next to each; coordinator/tokenizer/chat_template.cc recognises
exactly these texts. tests/coordinator/chat_template_vectors_test.cc compares tpserve's rendering + tokenization
with the file this script writes.

Rendering: jinja2's ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with a
raise_exception global, as transformers' apply_chat_template sets it up.

Tokenization: transformers (which holds the slow LlamaTokenizer) is not installable from Debian, so this
reproduces the slow LlamaTokenizer's documented behaviour for the Llama 2 tokenizer (whose tokenizer_config.json
has no "legacy" key, so legacy=True) with python3-sentencepiece:
  1. The rendered text is split at its special tokens (<s>, </s>, <unk>: PreTrainedTokenizer.tokenize's
     added-token trie). Llama 2 declares them with lstrip=rstrip=False, so no whitespace around them is
     stripped, and empty chunks between two special tokens produce nothing.
  2. Each special token becomes its id; each text chunk is SentencePiece-encoded on its own
     (legacy LlamaTokenizer._tokenize = sp_model.encode(chunk)), so every chunk gets SentencePiece's
     dummy-prefix "▁" (e.g. "</s>\\n" -> 2, 29871, 13).
  3. BOS: add_bos_token is true, so <s> is prepended (encode(add_special_tokens=True)) unless the rendered
     text already starts with <s> (templates that write bos_token themselves, as apply_chat_template's
     add_special_tokens=False assumes). This keeps Tulu's BOS and never doubles Llama-2-chat's.
  4. Only the special tokens the template itself inserts (bos_token / eos_token) are special: message content
     is always text, so a user typing "</s>" gets text tokens, never EOS. Hugging Face would turn it into EOS;
     tpserve deliberately does not (prompt injection of an end of turn), so the script renders with marker
     characters for bos_token / eos_token and splits only at those. For conversations whose content holds no
     special-looking strings the script checks that this equals rule 1 applied to the plain text.

Tulu and system messages: the shipped Tulu template silently drops system turns; tpserve renders them as
"<|system|>\\n" + content + "\\n" (Tulu 2's training format, see chat_template.h). Conversations with a system
message are therefore rendered for "tulu" with the shipped template plus that one branch, and the vector says
so ("jinja": "shipped+system").
"""
import argparse
import json
import os
import sys

SKIP = 77
try:
    import jinja2
    import jinja2.sandbox
    import sentencepiece
except ImportError as e:
    print("SKIP: %s (apt-get install python3-jinja2 python3-sentencepiece; run with /usr/bin/python3)" % e)
    sys.exit(SKIP)

BOS_MARK = "\ue000"  # private-use code points: never in the conversations below
EOS_MARK = "\ue001"

# ../shared/tokenizers/llama2/tokenizer_config.json (the Tulu V2 / V2.5 releases, allenai/tulu-2-dpo-13b etc.).
TULU = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] }}\n"
        "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n' + message['content'] + eos_token }}\n"
        "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
# tpserve's system-turn rendering for Tulu, added as one branch to the shipped text (used only for system turns).
TULU_WITH_SYSTEM = TULU.replace(
    "{% endif %}\n{% if loop.last",
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] }}\n{% endif %}\n{% if loop.last", 1)

# meta-llama/Llama-2-7b-chat-hf (and -13b/-70b) tokenizer_config.json "chat_template".
LLAMA2_CHAT = (r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
               r"{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
               r"{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
               r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               r"{% endif %}{% if loop.index0 == 0 and system_message != false %}"
               r"{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
               r"{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
               r"{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
               r"{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

# lmsys/vicuna-7b-v1.5 and -13b-v1.5 ship no chat_template. The one everyone sets (vLLM's docs point to it) is
# chujiezheng/chat_templates chat_templates/vicuna.jinja (FastChat's vicuna_v1.1 format with line breaks),
# put into tokenizer_config.json the way that repository's README does: .replace('    ', '').replace('\n', '').
VICUNA_JINJA_FILE = r"""{% if messages[0]['role'] == 'system' %}
    {% set loop_messages = messages[1:] %}
    {% set system_message = messages[0]['content'].strip() + '\n\n' %}
{% else %}
    {% set loop_messages = messages %}
    {% set system_message = '' %}
{% endif %}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if loop.index0 == 0 %}
        {{ bos_token + system_message }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ 'USER: ' + message['content'].strip() + '\n' }}
    {% elif message['role'] == 'assistant' %}
        {{ 'ASSISTANT: ' + message['content'].strip() + eos_token + '\n' }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
    {{ 'ASSISTANT:' }}
{% endif %}"""
VICUNA = VICUNA_JINJA_FILE.replace("    ", "").replace("\n", "")

# HuggingFaceH4/zephyr-7b-beta tokenizer_config.json "chat_template" (also zephyr-7b-alpha, TinyLlama-1.1B-Chat).
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
          "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
          "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
          "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
          "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

# teknium/OpenHermes-2.5-Mistral-7B tokenizer_config.json "chat_template" (ChatML; also transformers' former
# default_chat_template).
CHATML = (r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          r"'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TEMPLATES = [
    ("tulu", "allenai Tulu V2 / V2.5 tokenizer_config.json (../shared/tokenizers/llama2)", TULU),
    ("llama-2-chat", "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json", LLAMA2_CHAT),
    ("vicuna", "chujiezheng/chat_templates chat_templates/vicuna.jinja, collapsed as its README shows", VICUNA),
    ("zephyr", "HuggingFaceH4/zephyr-7b-beta tokenizer_config.json", ZEPHYR),
    ("chatml", "teknium/OpenHermes-2.5-Mistral-7B tokenizer_config.json", CHATML),
]

SPECIALS = ["<s>", "</s>", "<unk>"]

CONVERSATIONS = [
    # (messages, add_generation_prompt)
    ([{"role": "user", "content": "Hello, who are you?"}], True),
    ([{"role": "system", "content": "You are a helpful assistant. Answer in one sentence."},
      {"role": "user", "content": "What is the capital of France?"},
      {"role": "assistant", "content": "The capital of France is Paris."},
      {"role": "user", "content": "And of Italy?"}], True),
    ([{"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "4."},
      {"role": "user", "content": "And 3+3?"},
      {"role": "assistant", "content": "6."}], False),
    ([{"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "4."},
      {"role": "user", "content": "And 3+3?"},
      {"role": "assistant", "content": "6."}], True),
    # Special-looking strings in content stay text; whitespace that strip() removes (Python's str.isspace set).
    ([{"role": "system", "content": "  Never say </s> early.\n"},
      {"role": "user", "content": "Say </s> and <s> please <unk> [INST] <<SYS>> <|im_end|> <|user|> {{ x }}"},
      {"role": "assistant", "content": " \u3000 Sure: </s><s> \u00a0\n"},
      {"role": "user", "content": "\t日本語 € 🤖\u2003"}], True),
    ([{"role": "user", "content": ""}], True),
]


def render(template, messages, add_generation_prompt):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=BOS_MARK, eos_token=EOS_MARK)


def encode_marked(sp, marked):
    """Rules 2-4: split only at the template's markers."""
    ids = [] if marked.startswith(BOS_MARK) else [sp.bos_id()]
    chunk = ""
    for ch in marked:
        if ch in (BOS_MARK, EOS_MARK):
            if chunk:
                ids += sp.encode(chunk)
            chunk = ""
            ids.append(sp.bos_id() if ch == BOS_MARK else sp.eos_id())
        else:
            chunk += ch
    if chunk:
        ids += sp.encode(chunk)
    return ids


def encode_hf_slow(sp, text):
    """Rules 1-3 on plain text: what the slow LlamaTokenizer (legacy) does with every special token in it."""
    ids = [] if text.startswith("<s>") else [sp.bos_id()]
    i, chunk = 0, ""
    while i < len(text):
        hit = next((s for s in SPECIALS if text.startswith(s, i)), None)
        if hit is None:
            chunk += text[i]
            i += 1
            continue
        if chunk:
            ids += sp.encode(chunk)
        chunk = ""
        ids.append(sp.piece_to_id(hit))
        i += len(hit)
    if chunk:
        ids += sp.encode(chunk)
    return ids


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(root, "..", "shared"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "coordinator", "chat_template_vectors.json"))
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args()
    model = os.path.join(args.shared, "tokenizers", "llama2", "tokenizer.model")
    if not os.path.exists(model):
        print("SKIP: %s is absent" % model)
        return SKIP
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    assert (sp.bos_id(), sp.eos_id(), sp.piece_to_id("<unk>")) == (1, 2, 0)
    with open(os.path.join(args.shared, "tokenizers", "llama2", "tokenizer_config.json")) as f:
        assert json.load(f)["chat_template"] == TULU, "the shipped Tulu template changed"

    cases = []
    for name, _, template in TEMPLATES:
        for index, (messages, add_gen) in enumerate(CONVERSATIONS):
            has_system = any(m["role"] == "system" for m in messages)
            jinja_text, which = template, "shipped"
            if name == "tulu" and has_system:
                jinja_text, which = TULU_WITH_SYSTEM, "shipped+system"
            marked = render(jinja_text, messages, add_gen)
            text = marked.replace(BOS_MARK, "<s>").replace(EOS_MARK, "</s>")
            ids = encode_marked(sp, marked)
            content_has_specials = any(s in m["content"] for m in messages for s in SPECIALS)
            if not content_has_specials:
                # The template itself writes no special token except through bos_token / eos_token, and the
                # marker split equals the slow tokenizer's split of the plain text.
                plain = render(jinja_text, messages, add_gen).replace(BOS_MARK, "").replace(EOS_MARK, "")
                assert not any(s in plain for s in SPECIALS), (name, index)
                assert ids == encode_hf_slow(sp, text), (name, index)
            cases.append({"template": name, "conversation": index, "jinja": which, "messages": messages,
                          "add_generation_prompt": add_gen, "text": text, "ids": ids})

    out = {
        "generated_by": "scripts/make-chat-template-vectors.py (python3-jinja2 %s, python3-sentencepiece %s)" %
                        (jinja2.__version__, sentencepiece.__version__),
        "tokenizer": "tokenizers/llama2/tokenizer.model",
        "templates": [{"name": n, "origin": o, "chat_template": t} for n, o, t in TEMPLATES],
        "cases": cases,
    }
    text = json.dumps(out, ensure_ascii=False, indent=1) + "\n"
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            if f.read() != text:
                print("FAIL: %s differs from what this script generates now; rerun it and commit the result" % args.out)
                return 1
        print("ok: %s is what this script generates (%d cases)" % (args.out, len(cases)))
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print("wrote %d cases for %d templates to %s" % (len(cases), len(TEMPLATES), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
