//! Chat templates: the model's own Jinja template (tokenizer_config.json `chat_template` or GGUF
//! `tokenizer.chat_template`) rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: `messages`, `add_generation_prompt`, the special-token
//! strings, `raise_exception`, and Python string methods. Knows text, not token ids.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

/// Renders `messages` with `template`; `add_generation_prompt` appends the assistant header.
pub fn render_chat(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    // transformers renders with trim_blocks and lstrip_blocks on.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template)
        .map_err(|e| TemplateError(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| TemplateError(e.to_string()))?;
    tmpl.render(context! { messages, add_generation_prompt, bos_token, eos_token })
        .map_err(|e| TemplateError(e.to_string()))
}

/// ChatML, as SmolLM2 and Qwen2 write it (without their default system prompt).
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Llama 3's header/eot format.
const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Alpaca's "### Instruction: / ### Response:" blocks for base models without a chat format; a
/// system message is the preamble, each answer ends with EOS.
const ALPACA: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% elif message['role'] == 'user' %}{% if loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'assistant' %}{{ '\n\n' }}{% endif %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% else %}{{ '### Response:\n' + message['content'] + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}";

/// Gemma's turns, as Gemma 2/3 tokenizers render them: BOS, `<start_of_turn>user|model`, each
/// message trimmed and closed by `<end_of_turn>` and a newline. Gemma has no system role: a
/// system message opens the first user turn, followed by a blank line. Roles must alternate.
const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}{% for message in turns %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Gemma chats alternate user and assistant turns, starting with the user (after an optional system message)') }}{% endif %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// A built-in template by the name a recipe's `data.template` uses.
pub fn named(name: &str) -> Option<&'static str> {
    match name {
        "chatml" => Some(CHATML),
        "llama3" => Some(LLAMA3),
        "alpaca" => Some(ALPACA),
        "gemma" => Some(GEMMA),
        _ => None,
    }
}

/// The template to render chats with: the recipe's (named or inline) over the model's own.
pub fn choose<'a>(recipe: Option<&'a str>, model: Option<&'a str>) -> Option<&'a str> {
    match recipe {
        Some(r) => Some(named(r).unwrap_or(r)),
        None => model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn alpaca_template_renders_instruction_response_blocks() {
        let chat = [
            msg("system", "Be brief."),
            msg("user", "Hi"),
            msg("assistant", "Hello."),
            msg("user", "Bye"),
        ];
        let text = render_chat(ALPACA, &chat, true, "<s>", "</s>").unwrap();
        assert_eq!(
            text,
            "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello.</s>\n\n### Instruction:\nBye\n\n### Response:\n"
        );
    }

    #[test]
    fn gemma_template_renders_turns_with_the_system_message_in_the_first_user_turn() {
        let chat = [
            msg("system", "Be brief."),
            msg("user", " Hi \n"),
            msg("assistant", "Hello."),
            msg("user", "Bye"),
        ];
        let text = render_chat(GEMMA, &chat, true, "<bos>", "<eos>").unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        let text = render_chat(GEMMA, &chat[1..3], false, "<bos>", "<eos>").unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        );
        let err = render_chat(GEMMA, &chat[2..], false, "<bos>", "<eos>").unwrap_err();
        assert!(err.to_string().contains("alternate"), "{err}");
    }
}
