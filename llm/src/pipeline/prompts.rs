//! The role prompts and what each stage is shown. Pure functions.

use super::{Profile, Stage};
use crate::ChatMessage;

/// The generator's role prompt (a council candidate's too, unless the
/// profile gives its own); a likelihood ballot scores under it as well
/// (`council::judge_messages`).
pub const GENERATOR_ROLE_PROMPT: &str = "Answer the user's question directly and correctly. Give the \
answer first, in one or two short sentences.";
const GENERATOR: &str = GENERATOR_ROLE_PROMPT;
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

/// The labels this module puts around a stage's inputs. A small model often
/// echoes them back ("Question: ... Draft answer: ..."); they are never part
/// of an answer.
const INPUT_LABELS: [&str; 5] =
    ["Question:", "Draft answer:", "Refined answer:", "Reviewer's notes:", "Final answer:"];

/// A stage's output with echoed prompt scaffolding removed: when the text
/// repeats the labelled inputs it was shown, only what follows the last
/// label counts (after a `Final answer:` label, what follows it); role
/// preambles ("You are the Curator...") are dropped line by line. Returns
/// the text unchanged when it echoes nothing.
pub fn strip_prompt_echo(text: &str) -> String {
    let trimmed = text.trim();
    let mut rest = trimmed;
    if let Some(at) = trimmed.find("Final answer:") {
        rest = &trimmed[at + "Final answer:".len()..];
    } else if INPUT_LABELS.iter().any(|label| trimmed.starts_with(label)) {
        // Everything up to the last labelled block is an echo of the inputs;
        // the model's own text is that block's last paragraph onwards.
        let last =
            INPUT_LABELS.iter().filter_map(|label| trimmed.rfind(label).map(|at| (at, label.len()))).max();
        if let Some((at, len)) = last {
            let block = &trimmed[at + len..];
            rest = block.split_once("\n\n").map_or(block, |(_, after)| after);
            if rest.trim().is_empty() {
                rest = block;
            }
        }
    }
    let kept: Vec<&str> = rest
        .lines()
        .filter(|line| {
            !line.trim_start().starts_with("You are the ") || !line.contains("panel of assistants")
        })
        .collect();
    kept.join("\n").trim().to_string()
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

#[cfg(test)]
mod tests {
    use super::strip_prompt_echo;

    #[test]
    fn echoed_inputs_and_role_preambles_never_reach_the_answer() {
        assert_eq!(
            strip_prompt_echo("  Paris is the capital of France. "),
            "Paris is the capital of France."
        );
        let echoed = "Question:\nWhat is the capital of France?\n\nDraft answer:\nParis.\n\nThe capital of France is Paris.";
        assert_eq!(strip_prompt_echo(echoed), "The capital of France is Paris.");
        let labelled = "Question: capital of Spain?\nFinal answer: Madrid is the capital of Spain.";
        assert_eq!(strip_prompt_echo(labelled), "Madrid is the capital of Spain.");
        let preamble = "You are the Curator on a panel of assistants.\nMadrid is the capital of Spain.";
        assert_eq!(strip_prompt_echo(preamble), "Madrid is the capital of Spain.");
        // A question echoed with nothing after it leaves the echoed block, not nothing.
        assert_eq!(strip_prompt_echo("Question:\nWhat is 2+2?"), "What is 2+2?");
    }
}
