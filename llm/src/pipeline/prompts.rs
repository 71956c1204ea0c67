//! The role prompts and what each stage is shown. Pure functions.

use super::{Profile, Stage};
use crate::ChatMessage;

const GENERATOR: &str = "You are the Generator on a panel of assistants. Answer the user's question \
directly and correctly. Be concise.";
const REFINER: &str = "You are the Refiner on a panel of assistants. You get a question and a draft \
answer. Rewrite the draft into a clearer, more accurate and more complete answer. Reply with the \
improved answer only.";
const VALIDATOR: &str = "You are the Validator on a panel of assistants. You get a question and a draft \
answer. Check the draft for factual errors, omissions and unsupported claims. List the problems \
briefly, or say that it is correct.";
const CURATOR: &str = "You are the Curator on a panel of assistants. You get a question, a draft \
answer, a refined answer and a reviewer's notes. Write the final answer: keep what is correct and \
fix what the notes point out. Reply with the final answer only.";

fn role_prompt(stage: Stage) -> &'static str {
    match stage {
        Stage::Generator => GENERATOR,
        Stage::Refiner => REFINER,
        Stage::Validator => VALIDATOR,
        Stage::Curator => CURATOR,
    }
}

/// The conversation as plain text: a lone user message as itself, anything
/// longer as `role: content` lines.
pub fn render_conversation(conversation: &[ChatMessage]) -> String {
    match conversation {
        [only] if only.role == "user" => only.content.clone(),
        _ => conversation.iter().map(|m| format!("{}: {}", m.role, m.content)).collect::<Vec<_>>().join("\n"),
    }
}

/// The messages a stage sends. `draft` is the generator's output (refiner,
/// validator, curator); `refined` and `review` are the curator's other inputs.
pub fn stage_messages(
    stage: Stage,
    profile: &Profile,
    conversation: &[ChatMessage],
    draft: &str,
    refined: &str,
    review: &str,
) -> Vec<ChatMessage> {
    let role = profile.stage(stage).prompt.as_deref().unwrap_or(role_prompt(stage));
    let system = ChatMessage::system(role);
    let question = render_conversation(conversation);
    match stage {
        Stage::Generator => {
            // The asker's own system messages are kept, after the role prompt.
            let mut instructions = role.to_string();
            for message in conversation.iter().filter(|m| m.role == "system") {
                instructions.push_str("\n\n");
                instructions.push_str(&message.content);
            }
            let mut messages = vec![ChatMessage::system(instructions)];
            messages.extend(conversation.iter().filter(|m| m.role != "system").cloned());
            messages
        }
        Stage::Refiner | Stage::Validator => {
            vec![system, ChatMessage::user(format!("Question:\n{question}\n\nDraft answer:\n{draft}"))]
        }
        Stage::Curator => vec![
            system,
            ChatMessage::user(format!(
                "Question:\n{question}\n\nDraft answer:\n{draft}\n\nRefined answer:\n{refined}\n\n\
                 Reviewer's notes:\n{review}"
            )),
        ],
    }
}
