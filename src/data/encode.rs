//! Examples → token ids and labels (HF convention, -100 = no loss). By default only completions
//! and assistant turns are trained on (each assistant turn through its end-of-turn token); EOS is
//! appended to text and completions and is always trained on, so the model learns to stop.
//! Chats are rendered with the model's template; the assistant spans are found by rendering the
//! conversation turn by turn, and each piece is tokenised on its own (pieces meet at special
//! tokens in the templates we ship, so this equals tokenising the whole text).

use super::batch::IGNORE;
use super::rows::Example;
use super::template::{Message, render_chat};
use crate::recipe::Truncation;
use crate::weights::tokenizer::ModelTokenizer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// The class of a sequence-classification example (its labels are then all IGNORE).
    pub class: Option<u32>,
    /// A preference pair's rejected sequence (this one is the chosen): the same prompt tokens,
    /// labels on its completion.
    pub rejected: Option<Box<Encoded>>,
}

impl Encoded {
    /// The sequences this example puts in a batch: itself, and a preference pair's rejected.
    pub fn rows(&self) -> impl Iterator<Item = &Encoded> {
        std::iter::once(self).chain(self.rejected.as_deref())
    }

    /// Targets that carry loss: labelled next tokens, or 1 for a classification example.
    pub fn loss_tokens(&self) -> usize {
        if self.class.is_some() {
            return 1;
        }
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// How examples become tokens.
pub struct Encoder<'a> {
    pub tokenizer: &'a ModelTokenizer,
    /// Jinja chat template (the model's own unless the recipe overrides it).
    pub template: Option<&'a str>,
    pub train_on_inputs: bool,
    pub max_len: usize,
    pub truncation: Truncation,
    /// Sequence classification (`model.task = "classification"`): the class names, in logit
    /// order. None: classification rows become generative answers.
    pub labels: Option<&'a [String]>,
}

/// What encoding did to a row that is still usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Whole,
    Truncated,
    /// A preference pair whose prompt, tokenised alone, is not a prefix of its sequences (the
    /// tokenizer merged across the boundary, or the template renders the prompt differently
    /// alone): its completion starts where they part, as TRL's (which warns).
    PromptSplit {
        truncated: bool,
    },
}

impl Fit {
    pub fn truncated(self) -> bool {
        matches!(self, Fit::Truncated | Fit::PromptSplit { truncated: true })
    }
}

impl Encoder<'_> {
    /// The example's tokens, or why it cannot be used.
    pub fn encode(&self, example: &Example) -> Result<(Encoded, Fit), String> {
        let mut pieces: Vec<(Vec<u32>, bool)> = Vec::new(); // (tokens, trained)
        let tok = |text: &str, special: bool| self.tokenizer.encode(text, special);
        let eos = || {
            self.tokenizer
                .eos_id
                .map(|e| vec![e])
                .ok_or("the tokenizer has no EOS token to end examples with".to_string())
        };
        match example {
            Example::Text(text) => {
                pieces.push((tok(text, true)?, true));
                pieces.push((eos()?, true));
            }
            Example::PromptCompletion { prompt, completion } => {
                pieces.push((tok(prompt, true)?, self.train_on_inputs));
                pieces.push((tok(completion, false)?, true));
                pieces.push((eos()?, true));
            }
            Example::Chat(messages) => {
                for (text, trained) in self.chat_pieces(messages)? {
                    pieces.push((tok(&text, false)?, trained || self.train_on_inputs));
                }
            }
            Example::Preference {
                prompt,
                chosen,
                rejected,
            } => return self.pair(prompt, chosen, rejected),
            Example::ChatPreference {
                prompt,
                chosen,
                rejected,
            } => return self.chat_pair(prompt, chosen, rejected),
            Example::Classification { text, label } => {
                return match self.labels {
                    Some(labels) => self.classify(text, label, labels),
                    None => self.encode(&generative(text, label, self.template.is_some())),
                };
            }
        }
        let mut enc = Encoded {
            ids: Vec::new(),
            labels: Vec::new(),
            class: None,
            rejected: None,
        };
        for (ids, trained) in pieces {
            enc.labels.extend(
                ids.iter()
                    .map(|&t| if trained { i64::from(t) } else { IGNORE }),
            );
            enc.ids.extend(ids);
        }
        let mut fit = Fit::Whole;
        if enc.ids.len() > self.max_len {
            if self.truncation == Truncation::Drop {
                return Err(format!(
                    "{} tokens, over data.max_len = {} (data.truncation = \"drop\")",
                    enc.ids.len(),
                    self.max_len
                ));
            }
            enc.ids.truncate(self.max_len);
            enc.labels.truncate(self.max_len);
            fit = Fit::Truncated;
        }
        if enc.loss_tokens() == 0 {
            return Err(format!(
                "no trained tokens within data.max_len = {} (the prompt alone fills it)",
                self.max_len
            ));
        }
        Ok((enc, fit))
    }

    /// A preference pair as TRL's DPOTrainer tokenises it: EOS appended to each completion's
    /// text (unless it ends with it), prompt + completion tokenised as one text, the completion
    /// starting where that and the prompt's own tokens part (the shorter of the two pairs'
    /// agreement), each sequence cut to `max_len` from the end (`keep_start`). A prompt that
    /// fills `max_len` leaves nothing to compare: refused, as TRL drops it.
    fn pair(&self, prompt: &str, chosen: &str, rejected: &str) -> Result<(Encoded, Fit), String> {
        let tok = |text: &str| self.tokenizer.encode(text, true);
        let eos = self
            .tokenizer
            .eos_id
            .and_then(|e| self.tokenizer.tokenizer.id_to_token(e))
            .ok_or("the tokenizer has no EOS token to end completions with")?;
        let ended = |c: &str| match c.ends_with(&eos) {
            true => format!("{prompt}{c}"),
            false => format!("{prompt}{c}{eos}"),
        };
        let prompt_ids = tok(prompt)?;
        let (with_chosen, with_rejected) = (tok(&ended(chosen))?, tok(&ended(rejected))?);
        self.split_pair(prompt_ids, with_chosen, with_rejected)
    }

    /// A conversational pair as TRL tokenises it: the prompt rendered with the generation
    /// prompt, prompt + each completion rendered whole (the template ends the turns), each
    /// text tokenised as `apply_chat_template` does (no special tokens added), then split as
    /// [`Self::pair`] splits.
    fn chat_pair(
        &self,
        prompt: &[Message],
        chosen: &[Message],
        rejected: &[Message],
    ) -> Result<(Encoded, Fit), String> {
        let render = |messages: &[Message], generation_prompt: bool| -> Result<Vec<u32>, String> {
            self.tokenizer
                .encode(&self.render(messages, generation_prompt)?, false)
        };
        let whole = |completion: &[Message]| render(&[prompt, completion].concat(), false);
        self.split_pair(render(prompt, true)?, whole(chosen)?, whole(rejected)?)
    }

    /// A pair from its prompt's tokens and each whole sequence's: the completion starts where
    /// the prompt's tokens and the sequence part (the shorter agreement of the two), each
    /// sequence cut to `max_len` from the end.
    fn split_pair(
        &self,
        prompt_ids: Vec<u32>,
        with_chosen: Vec<u32>,
        with_rejected: Vec<u32>,
    ) -> Result<(Encoded, Fit), String> {
        let shared = |ids: &[u32]| {
            prompt_ids
                .iter()
                .zip(ids)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let prompt_len = shared(&with_chosen).min(shared(&with_rejected));
        if prompt_len >= self.max_len {
            return Err(format!(
                "the prompt alone is {prompt_len} tokens, filling preference.max_length = {}: no completion token would be compared",
                self.max_len
            ));
        }
        let mut truncated = false;
        let mut sequence = |mut ids: Vec<u32>| {
            if ids.len() > self.max_len {
                ids.truncate(self.max_len);
                truncated = true;
            }
            let labels = (ids.iter().enumerate())
                .map(|(t, &id)| {
                    if t < prompt_len {
                        IGNORE
                    } else {
                        i64::from(id)
                    }
                })
                .collect();
            Encoded {
                ids,
                labels,
                class: None,
                rejected: None,
            }
        };
        let mut pair = sequence(with_chosen);
        pair.rejected = Some(Box::new(sequence(with_rejected)));
        let fit = match (prompt_len < prompt_ids.len(), truncated) {
            (true, truncated) => Fit::PromptSplit { truncated },
            (false, true) => Fit::Truncated,
            (false, false) => Fit::Whole,
        };
        Ok((pair, fit))
    }

    /// A sequence-classification example: the text with the tokenizer's special tokens (BERT's
    /// [CLS] … [SEP]) and the label's index. Truncation keeps the closing special token, as the
    /// tokenizer's own truncation does.
    fn classify(
        &self,
        text: &str,
        label: &str,
        labels: &[String],
    ) -> Result<(Encoded, Fit), String> {
        let class = labels.iter().position(|l| l == label).ok_or_else(|| {
            format!(
                "label {label:?} is not among the training data's labels ({})",
                labels.join(", ")
            )
        })?;
        let mut ids = self.tokenizer.encode(text, true)?;
        let mut fit = Fit::Whole;
        if ids.len() > self.max_len {
            if self.truncation == Truncation::Drop {
                return Err(format!(
                    "{} tokens, over data.max_len = {} (data.truncation = \"drop\")",
                    ids.len(),
                    self.max_len
                ));
            }
            let closing = self.tokenizer.encode("", true)?.last().copied();
            let closing = closing.filter(|&c| ids.last() == Some(&c));
            ids.truncate(self.max_len);
            if let (Some(c), Some(last)) = (closing, ids.last_mut()) {
                *last = c;
            }
            fit = Fit::Truncated;
        }
        let labels = vec![IGNORE; ids.len()];
        Ok((
            Encoded {
                ids,
                labels,
                class: Some(class as u32),
                rejected: None,
            },
            fit,
        ))
    }

    /// `messages` rendered with the chat template (the model's BOS and EOS as its variables).
    fn render(&self, messages: &[Message], generation_prompt: bool) -> Result<String, String> {
        let template = self
            .template
            .ok_or("chat rows need a chat template: the model has none; set data.template")?;
        let name = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let (bos, eos) = (name(self.tokenizer.bos_id), name(self.tokenizer.eos_id));
        render_chat(template, messages, generation_prompt, &bos, &eos).map_err(|e| e.to_string())
    }

    /// The rendered conversation cut into (text, is-assistant-output) pieces.
    fn chat_pieces(&self, messages: &[Message]) -> Result<Vec<(String, bool)>, String> {
        let render = |upto: usize, generation_prompt: bool| {
            self.render(&messages[..upto], generation_prompt)
        };
        let mut pieces = Vec::new();
        let mut done = String::new(); // text already cut into pieces
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = render(i, true)?;
            let with_answer = render(i + 1, false)?;
            let (Some(new_prompt), Some(answer)) = (
                prompt.strip_prefix(done.as_str()),
                with_answer.strip_prefix(prompt.as_str()),
            ) else {
                return Err(
                    "the chat template does not render turn by turn (an earlier rendering is not a prefix of a later one); use data.template = \"chatml\" or train_on_inputs = true"
                        .into(),
                );
            };
            pieces.push((new_prompt.to_string(), false));
            pieces.push((answer.to_string(), true));
            done = with_answer;
        }
        let whole = render(messages.len(), false)?;
        match whole.strip_prefix(done.as_str()) {
            Some(rest) if !rest.is_empty() => pieces.push((rest.to_string(), false)),
            Some(_) => {}
            None => {
                return Err(
                    "the chat template renders the whole chat differently from its turns".into(),
                );
            }
        }
        Ok(pieces)
    }
}

/// Generative classification for a causal LM: the text asks, the label answers — as a chat turn
/// when the model has a template, else as a completion of "text\nLabel:".
fn generative(text: &str, label: &str, chat: bool) -> Example {
    if chat {
        let turn = |role: &str, content: &str| Message {
            role: role.into(),
            content: content.into(),
        };
        Example::Chat(vec![turn("user", text), turn("assistant", label)])
    } else {
        Example::PromptCompletion {
            prompt: format!("{text}\nLabel:"),
            completion: format!(" {label}"),
        }
    }
}
